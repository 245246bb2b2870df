//! Credentials for plugin tests, made with tools independent of the plugins: password
//! hashes with Python's hashlib (the recipe the auth-password README gives), JWTs signed
//! with the `openssl` command.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// `pbkdf2-sha256$<iterations>$<salt>$<hash>` for `password`.
pub fn password_hash(password: &str, iterations: u32) -> String {
    let script = "import hashlib,base64,os,sys; s=os.urandom(16); print('pbkdf2-sha256$%d$%s$%s' % (int(sys.argv[2]), base64.b64encode(s).decode(), base64.b64encode(hashlib.pbkdf2_hmac('sha256', sys.argv[1].encode(), s, int(sys.argv[2]))).decode()))";
    let out = Command::new("python3")
        .args(["-c", script, password, &iterations.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn openssl(args: &[&str], input: &[u8]) -> Vec<u8> {
    let mut c = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(input).unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(out.status.success(), "openssl {args:?}");
    out.stdout
}

/// `header.claims`, base64url; `claims` is the JSON the test wrote.
fn signing_input(alg: &str, claims: &str) -> String {
    let header = format!("{{\"alg\":\"{alg}\",\"typ\":\"JWT\"}}");
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    )
}

/// A JWT signed with HMAC-SHA256.
pub fn hs256(secret: &str, claims: &str) -> String {
    let input = signing_input("HS256", claims);
    let sig = openssl(
        &["dgst", "-sha256", "-hmac", secret, "-binary"],
        input.as_bytes(),
    );
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

/// An RSA key pair in `dir`: (private key path, public key PEM).
pub fn rsa_key(dir: &Path) -> (std::path::PathBuf, String) {
    let key = dir.join("jwt-key.pem");
    let st = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&key)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let public = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&key)
        .output()
        .unwrap()
        .stdout;
    (key, String::from_utf8(public).unwrap())
}

/// A JWT signed with RSASSA-PKCS1-v1_5 SHA-256.
pub fn rs256(key: &Path, claims: &str) -> String {
    let input = signing_input("RS256", claims);
    let sig = openssl(
        &[
            "dgst",
            "-sha256",
            "-sign",
            &key.display().to_string(),
            "-binary",
        ],
        input.as_bytes(),
    );
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
