//! `weir plugin test`: the real plugins run against cases files, every hook kind, with
//! no broker; a wrong answer, a missing input and a failing plugin are reported as such
//! and fail the run.

use std::path::Path;
use std::process::{Command, Output};
use weir_tests::{plugins, tokens, weir_bin};

/// Runs `weir plugin test` on a built plugin with this config table and these cases.
fn plugin_test(plugin: &str, config: &str, cases: &str, extra: &[&str]) -> (Output, String) {
    let dir = tempfile::tempdir().unwrap();
    let (config_file, cases_file) = (
        dir.path().join("config.toml"),
        dir.path().join("cases.toml"),
    );
    std::fs::write(&config_file, config).unwrap();
    std::fs::write(&cases_file, cases).unwrap();
    let out = Command::new(weir_bin())
        .args(["plugin", "test"])
        .arg(plugins::wasm(plugin))
        .arg("--config")
        .arg(&config_file)
        .arg("--cases")
        .arg(&cases_file)
        .args(extra)
        .output()
        .expect("weir runs");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out, text)
}

fn passes(plugin: &str, config: &str, cases: &str, n: usize) {
    let (out, text) = plugin_test(plugin, config, cases, &[]);
    assert!(out.status.success(), "{plugin}:\n{text}");
    assert!(
        text.contains(&format!("{n} passed, 0 failed")),
        "{plugin}:\n{text}"
    );
}

const ACL: &str = r#"
default = "defer"
rules = [
  { access = "readwrite", topic = "secret/#", allow = false },
  { access = "readwrite", topic = "home/%u/#" },
]
"#;

#[test]
fn every_hook_kind_is_tested_without_a_broker() {
    passes(
        "acl",
        ACL,
        r#"
[client]
username = "alice"

[[case]]
name = "her own home"
hook = "authorize"
action = "publish"
topic = "home/alice/temp"
expect = "allow"

[[case]]
hook = "authorize"
action = "subscribe"
topic = "secret/#"
expect = "deny 0x87"

[[case]]
name = "no rule: the next plugin decides"
hook = "authorize"
action = "publish"
topic = "other/x"
expect = "defer"

[[case]]
name = "another user's home"
hook = "authorize"
action = "publish"
topic = "home/alice/x"
username = "bob"
expect = "defer"
"#,
        4,
    );

    let hash = tokens::password_hash("pw", 1000);
    passes(
        "auth-password",
        &format!("users = [ {{ username = \"alice\", password_hash = {hash:?} }} ]"),
        r#"
[[case]]
hook = "authenticate"
username = "alice"
password = "pw"
expect = "allow"
expect_username = "alice"

[[case]]
hook = "authenticate"
username = "alice"
password = "wrong"
expect = "deny 0x86"

[[case]]
hook = "authenticate"
username = "carol"
password = "pw"
expect = "defer"
"#,
        3,
    );

    passes(
        "transform",
        r#"
rewrite = [ { from = "legacy/", to = "sensors/" } ]
json = [ { filter = "sensors/json/#", required = ["v"] } ]
tag = [ { filter = "sensors/#", name = "checked", value = "yes" } ]
"#,
        r#"
[[case]]
hook = "transform"
topic = "legacy/t1"
payload = "21.5"
expect = "replace"
expect_topic = "sensors/t1"
expect_user_properties = { checked = "yes" }

[[case]]
hook = "transform"
topic = "sensors/json/a"
payload = "not json"
expect = "drop 0x99"

[[case]]
hook = "transform"
topic = "elsewhere/t"
payload = "x"
expect = "keep"
"#,
        3,
    );

    passes(
        "rate-limit",
        r#"
action = "reject"
lease_ms = 0
per_client = { messages = { per_second = 1.0, burst = 1 } }
"#,
        r#"
[[case]]
hook = "rate-limit"
event = "publish"
bytes = 10
expect = "allow"

[[case]]
name = "the second within the second"
hook = "rate-limit"
event = "publish"
bytes = 10
expect = "reject 0x96"
"#,
        2,
    );

    passes(
        "tenant",
        "max_qos = 1",
        r#"
[client]
username = "acme"

[[case]]
hook = "subscribe"
filter = "sensors/#"
qos = 2
expect = "rewrite"
expect_filter = "tenants/acme/sensors/#"
expect_qos = 1

[[case]]
hook = "subscribe"
filter = "$SYS/#"
expect = "deny"

[[case]]
hook = "deliver"
topic = "tenants/acme/sensors/t"
payload = "1"
expect = "replace"
expect_topic = "sensors/t"
"#,
        3,
    );

    passes(
        "auth-scram",
        r#"users = [ { username = "alice", password = "wonderland" } ]"#,
        r#"
[[case]]
hook = "auth-start"
method = "SCRAM-SHA-256"
data = "n,,n=alice,r=fyko+d2lbbFgONRv9qkxdawL"
expect = "continue"

[[case]]
name = "a method nobody knows"
hook = "auth-start"
method = "KERBEROS"
expect = "failure 0x8c"
"#,
        2,
    );

    passes(
        "js-limiter",
        "messages_per_second = 1.0\nburst = 2",
        r#"
[[case]]
hook = "rate-limit"
event = "connect"
expect = "allow"

[[case]]
hook = "rate-limit"
event = "publish"
expect = "allow"

[[case]]
hook = "rate-limit"
event = "publish"
expect = "allow"

[[case]]
name = "over the burst"
hook = "rate-limit"
event = "publish"
expect = "reject 0x96"
"#,
        4,
    );

    passes(
        "event-log",
        "",
        r#"
[[case]]
hook = "observe"
events = ["connected", "subscribed", "disconnected"]
expect = "ok"
"#,
        1,
    );
}

#[test]
fn wrong_answers_missing_inputs_and_failures_fail_the_run() {
    let (out, text) = plugin_test(
        "acl",
        ACL,
        r#"
[client]
username = "alice"

[[case]]
name = "wrongly expected"
hook = "authorize"
action = "publish"
topic = "secret/plans"
expect = "allow"

[[case]]
name = "no topic"
hook = "authorize"
action = "publish"
expect = "allow"

[[case]]
hook = "authorize"
action = "publish"
topic = "home/alice/x"
expect = "allow"
"#,
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("FAIL  wrongly expected: authorize: expected allow, got deny 0x87"),
        "{text}"
    );
    assert!(
        text.contains("FAIL  no topic: authorize: authorize needs `topic`"),
        "{text}"
    );
    assert!(text.contains("ok    case 3: authorize -> allow"), "{text}");
    assert!(text.contains("1 passed, 2 failed"), "{text}");

    // A plugin that never answers fails at the deadline, and the case can expect it.
    let (out, text) = plugin_test(
        "misbehave",
        "mode = \"loop\"",
        r#"
[[case]]
hook = "authorize"
action = "publish"
topic = "bad/x"
expect = "failed deadline"

[[case]]
hook = "transform"
topic = "good/x"
expect = "keep"
"#,
        &["--deadline-ms", "50"],
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("2 passed, 0 failed"), "{text}");

    // A cases file that cannot be read is an error naming it.
    let (out, text) = plugin_test("acl", ACL, "[[case]]\nhook = \"authorise\"\n", &[]);
    assert!(!out.status.success());
    assert!(
        text.contains("cases.toml") && text.contains("authorise"),
        "{text}"
    );
    assert!(Path::new(&weir_bin()).exists());
}

/// `weir plugin new` in each language makes a project whose `test.sh` builds it and
/// passes its own cases with `weir plugin test`.
#[test]
fn a_new_plugin_builds_and_passes_its_own_test_in_every_language() {
    let dir = tempfile::tempdir().unwrap();
    for lang in ["rust", "python", "js"] {
        let name = format!("my-{lang}-acl");
        let made = Command::new(weir_bin())
            .args(["plugin", "new", &name, "--lang", lang, "--dir"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
        let project = dir.path().join(&name);
        for file in [
            "README.md",
            "cases.toml",
            "config.toml",
            "test.sh",
            "wit/weir-plugin.wit",
        ] {
            assert!(project.join(file).is_file(), "{lang}: {file}");
        }
        // Without `cargo test`'s variables (they change build fingerprints), and one
        // target directory for every run, so the SDK is compiled once.
        let mut test = Command::new("bash");
        test.arg(project.join("test.sh"));
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("CARGO_") && k != "CARGO_HOME" {
                test.env_remove(&*k);
            }
        }
        let out = test
            .env("CARGO_TARGET_DIR", plugins::root().join("target/scaffold"))
            .env("WEIR", weir_bin())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{lang}:\n{text}");
        assert!(text.contains("2 passed, 0 failed"), "{lang}:\n{text}");
    }
    // A second project of the same name is refused rather than overwritten.
    let again = Command::new(weir_bin())
        .args(["plugin", "new", "my-rust-acl", "--lang", "rust", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
}
