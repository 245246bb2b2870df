//! Running Weir in production: PROXY protocol listeners behind a load balancer, JSON
//! logs, and the systemd unit in docs/.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use weir_tests::http::request;
use weir_tests::pki::Pki;
use weir_tests::raw::{connect, Raw};
use weir_tests::{eventually, Listener, Opts, Weir};

/// A PROXY protocol v2 header for a TCP connection from `src` (IPv4) to 10.0.0.1:1883.
fn v2_header(src: [u8; 4], port: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend([0x21, 0x11, 0, 12]);
    h.extend(src);
    h.extend([10, 0, 0, 1]);
    h.extend(port.to_be_bytes());
    h.extend(1883u16.to_be_bytes());
    h
}

fn v1_header(src: &str, port: u16) -> Vec<u8> {
    format!("PROXY TCP4 {src} 10.0.0.1 {port} 1883\r\n").into_bytes()
}

/// The address the admin API gives for a connected client.
fn address_of(w: &Weir, client_id: &str) -> Option<String> {
    let (status, body) = request(w.admin_port, "GET", "/clients", None);
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    v["clients"]
        .as_array()?
        .iter()
        .find(|c| c["client_id"] == client_id)
        .map(|c| c["address"].as_str().unwrap_or_default().to_owned())
}

/// Sends `header` then a 5.0 CONNECT; the CONNACK's reason code, `None` if the
/// connection was closed instead.
fn connect_behind(port: u16, header: &[u8], id: &str) -> (Raw, Option<u8>) {
    let mut c = Raw::connect(port);
    c.send(&[header, &connect(5, id, 0x02, 60, &[])].concat());
    let code = c.recv().map(|p| {
        assert_eq!(p[0], 0x20, "CONNACK expected: {p:?}");
        p[3]
    });
    (c, code)
}

fn proxied_tcp(limits: &str) -> Weir {
    Weir::with(Opts {
        listeners: vec![Listener::new("lb", "tcp", "proxy_protocol = true")],
        limits: limits.into(),
        ..Default::default()
    })
}

#[test]
fn the_client_address_comes_from_proxy_v1_and_v2_headers() {
    // event-log writes each event a plugin is told as a JSON line in the broker's log.
    let w = Weir::with(Opts {
        listeners: vec![Listener::new("lb", "tcp", "proxy_protocol = true")],
        extra: format!(
            "[[plugin]]\nname = \"audit\"\npath = {:?}\n",
            weir_tests::plugins::wasm("event-log")
        ),
        ..Default::default()
    });
    let lb = w.port_of("lb");
    let (_a, code) = connect_behind(lb, &v1_header("203.0.113.7", 51234), "via-v1");
    assert_eq!(code, Some(0));
    let (_b, code) = connect_behind(lb, &v2_header([198, 51, 100, 9], 40000), "via-v2");
    assert_eq!(code, Some(0));
    assert_eq!(
        address_of(&w, "via-v1").as_deref(),
        Some("203.0.113.7:51234")
    );
    assert_eq!(
        address_of(&w, "via-v2").as_deref(),
        Some("198.51.100.9:40000")
    );
    // The log names the client's address, not the balancer's.
    assert!(eventually(Duration::from_secs(5), || w.log().lines().any(
        |l| l.contains("client connected")
            && l.contains("via-v2")
            && l.contains("198.51.100.9:40000")
    )));
    // Plugins are told the client's address too.
    assert!(
        eventually(Duration::from_secs(10), || w
            .log()
            .lines()
            .any(|l| l.contains("\"event\":\"connected\"")
                && l.contains("\"peer\":\"203.0.113.7:51234\""))),
        "no connected event with the header's address:\n{}",
        w.log()
    );
    // A balancer's health check (v2 LOCAL) keeps the socket's address.
    let mut local = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    local.extend([0x20, 0x00, 0, 0]);
    let (_c, code) = connect_behind(lb, &local, "health");
    assert_eq!(code, Some(0));
    assert!(address_of(&w, "health").unwrap().starts_with("127.0.0.1:"));
    // The plain listener is not changed: a header there is not MQTT.
    let (_d, code) = connect_behind(w.port, &v1_header("203.0.113.8", 1), "plain");
    assert_eq!(code, None);
}

#[test]
fn a_connection_without_a_valid_header_is_refused() {
    let w = proxied_tcp("");
    let lb = w.port_of("lb");
    for (header, why) in [
        (Vec::new(), "neither \"PROXY \" nor the v2 signature"),
        (
            b"PROXY TCP4 999.1.1.1 10.0.0.1 1 2\r\n".to_vec(),
            "bad IPv4 source",
        ),
        (
            [&b"\r\n\r\n\0\r\nQUIT\n"[..], &[0x21, 0x11, 0, 3, 1, 2, 3]].concat(),
            "IPv4 addresses cut short",
        ),
    ] {
        let (mut c, code) = connect_behind(lb, &header, "no-header");
        assert_eq!(code, None, "{why}: a CONNACK came");
        assert!(c.closed());
        assert!(
            eventually(Duration::from_secs(5), || w.log().contains(why)),
            "no log line names '{why}':\n{}",
            w.log()
        );
    }
    // A header that never ends is cut off at the handshake deadline.
    let w = proxied_tcp("connect_timeout_secs = 1");
    let mut c = Raw::connect(w.port_of("lb"));
    c.send(b"PROXY TCP4 203.0.1");
    assert!(c.closed());
    assert!(eventually(Duration::from_secs(5), || w
        .log()
        .contains("PROXY protocol header not received in time")));
    assert!(address_of(&w, "no-header").is_none());
}

#[test]
fn per_address_limits_count_the_address_the_header_gives() {
    let w = proxied_tcp("max_connections_per_address = 1");
    let lb = w.port_of("lb");
    let (_first, code) = connect_behind(lb, &v1_header("192.0.2.1", 1000), "first");
    assert_eq!(code, Some(0));
    // Same client address through the balancer: over the limit (0x97 quota exceeded).
    let (_second, code) = connect_behind(lb, &v1_header("192.0.2.1", 1001), "second");
    assert_eq!(code, Some(0x97));
    // Another client address through the same balancer connection source: let in.
    let (_third, code) = connect_behind(lb, &v2_header([192, 0, 2, 2], 1000), "third");
    assert_eq!(code, Some(0));
}

#[test]
fn sockets_waiting_for_their_header_count_against_the_connection_limit() {
    let w = Weir::with(Opts {
        listeners: vec![Listener::new(
            "lb",
            "tcp",
            "proxy_protocol = true\nmax_connections = 2",
        )],
        ..Default::default()
    });
    let lb = w.port_of("lb");
    // Two sockets that say nothing hold the listener's two places...
    let silent: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(("127.0.0.1", lb)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // ...so a client with a good header is told the broker is busy (0x89).
    let (_c, code) = connect_behind(lb, &v1_header("198.51.100.20", 5000), "late");
    assert_eq!(code, Some(0x89));
    drop(silent);
    assert!(eventually(Duration::from_secs(5), || {
        connect_behind(lb, &v1_header("198.51.100.20", 5001), "later").1 == Some(0)
    }));
}

/// A TLS client behind a TCP balancer (HAProxy `mode tcp` + `send-proxy-v2`): the header
/// comes before the TLS handshake.
#[tokio::test]
async fn the_header_comes_before_tls_on_a_tls_listener() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = Pki::new();
    let w = proxied_tls(&pki);
    let connector = tls_connector(&pki.ca_file);
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", w.port_of("lbtls")))
        .await
        .unwrap();
    tcp.write_all(&v2_header([203, 0, 113, 50], 61000))
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.expect("TLS handshake");
    tls.write_all(&connect(5, "tls-behind-lb", 0x02, 60, &[]))
        .await
        .unwrap();
    let mut connack = [0u8; 4];
    tls.read_exact(&mut connack).await.expect("CONNACK");
    assert_eq!((connack[0], connack[3]), (0x20, 0));
    let address = tokio::task::spawn_blocking(move || address_of(&w, "tls-behind-lb"))
        .await
        .unwrap();
    assert_eq!(address.as_deref(), Some("203.0.113.50:61000"));

    // Without the header, the TLS hello itself is refused.
    let w = proxied_tls(&pki);
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", w.port_of("lbtls")))
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let refused = tls_connector(&pki.ca_file).connect(name, tcp).await;
    assert!(refused.is_err(), "TLS without a PROXY header was accepted");
}

fn proxied_tls(pki: &Pki) -> Weir {
    let lines = format!(
        "cert = {:?}\nkey = {:?}\nproxy_protocol = true",
        pki.server.cert, pki.server.key
    );
    Weir::with(Opts {
        listeners: vec![Listener::new("lbtls", "tls", &lines)],
        ..Default::default()
    })
}

fn tls_connector(ca: &Path) -> tokio_rustls::TlsConnector {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots.add(cert.expect("CA certificate")).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

#[test]
fn json_logs_are_one_object_per_line_with_stable_fields() {
    let w = Weir::with(Opts {
        log: "format = \"json\"".into(),
        ..Default::default()
    });
    let mut c = Raw::connect(w.port);
    c.send(&connect(5, "json-logged", 0x02, 60, &[]));
    assert!(c.recv().is_some());
    assert!(eventually(Duration::from_secs(5), || w
        .log()
        .contains("json-logged")));
    let log = w.log();
    let mut connected = None;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        for field in ["timestamp", "level", "target", "message"] {
            assert!(v[field].is_string(), "no {field} in {line}");
        }
        if v["message"] == "client connected" {
            connected = Some(v);
        }
    }
    let connected = connected.unwrap_or_else(|| panic!("no 'client connected' event:\n{log}"));
    assert_eq!(connected["client_id"], "json-logged");
    assert_eq!(connected["level"], "INFO");
    assert_eq!(connected["listener"], "tcp");
    assert!(connected["peer"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
}

#[test]
fn a_log_format_that_is_not_text_or_json_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("weir.toml");
    std::fs::write(&config, "[log]\nformat = \"xml\"\n").unwrap();
    let out = Command::new(weir_tests::weir_bin())
        .arg("--config")
        .arg(&config)
        .arg("--check")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("format") && err.contains("xml"), "{err}");
}

/// docs/weir.service with this build's binary in place of /usr/local/bin/weir, since
/// `systemd-analyze verify` checks that the commands exist.
fn unit_for(binary: &Path, config: &Path, dir: &Path) -> std::path::PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let unit = std::fs::read_to_string(root.join("docs/weir.service")).unwrap();
    let unit = unit
        .replace("/usr/local/bin/weir", &binary.display().to_string())
        .replace("/etc/weir/weir.toml", &config.display().to_string());
    let path = dir.join("weir.service");
    std::fs::write(&path, unit).unwrap();
    path
}

#[test]
fn the_systemd_unit_verifies_and_its_start_check_runs() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("weir.toml");
    std::fs::write(&config, "[storage]\npersistence = false\n").unwrap();
    let unit = unit_for(&weir_tests::weir_bin(), &config, dir.path());
    let text = std::fs::read_to_string(&unit).unwrap();
    for line in [
        "User=weir",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "LimitNOFILE=",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(text.contains(line), "docs/weir.service lacks {line}");
    }
    // ExecStartPre, as systemd would run it.
    let pre = text
        .lines()
        .find_map(|l| l.strip_prefix("ExecStartPre="))
        .expect("ExecStartPre");
    let mut words = pre.split_whitespace();
    let out = Command::new(words.next().unwrap())
        .args(words)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("systemd-analyze is not installed: the unit is not verified here");
        return;
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // verify exits 0 on unknown keys and only warns: any word about the unit fails.
    assert!(
        out.status.success() && !said.contains("weir.service"),
        "{said}"
    );
}

/// SIGHUP is how `systemctl reload` reaches Weir: without plugins it must not end it.
#[test]
fn sighup_without_plugins_leaves_the_broker_running() {
    let w = Weir::start();
    w.sighup_until("no plugin chain to reload");
    let mut s = TcpStream::connect(("127.0.0.1", w.port)).expect("still listening");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&connect(5, "after-hup", 0x02, 60, &[]))
        .unwrap();
    let mut connack = [0u8; 4];
    s.read_exact(&mut connack).unwrap();
    assert_eq!(connack[0], 0x20);
}

/// `weir` with the admin API at `w`'s, trusting `ca`: whether it succeeded, and what
/// it printed.
fn cli_over_tls(w: &Weir, ca: &Path, args: &[&str]) -> (bool, String) {
    let ca = ca.to_string_lossy();
    let with = [&["--admin-ca", &*ca, "--token", "t0k"][..], args].concat();
    weir_tests::weir_cli(w.admin_port, &with)
}

/// `[admin] cert` and `key`: the API speaks HTTPS and nothing else, the dashboard's
/// cookie is `Secure`, the CLI trusts the CA it is given, and SIGHUP puts a new
/// certificate in force for new connections.
#[test]
fn the_admin_api_over_https_marks_its_cookie_secure_and_reloads_on_sighup() {
    let pki = Pki::new();
    let w = Weir::with(Opts {
        admin: format!(
            "token = \"t0k\"\ncert = {:?}\nkey = {:?}\n",
            pki.server.cert, pki.server.key
        ),
        ..Default::default()
    });
    let (ok, out) = cli_over_tls(&w, &pki.ca_file, &["health"]);
    assert!(ok, "{out}");

    // Plain HTTP gets no HTTP answer: the token never crosses in the clear.
    let mut plain = TcpStream::connect(("127.0.0.1", w.admin_port)).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let _ =
        plain.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t0k\r\n\r\n");
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(
        !answer.starts_with(b"HTTP/"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert!(eventually(Duration::from_secs(5), || w
        .log()
        .contains("TLS handshake failed")));

    let login = r#"{"token":"t0k"}"#;
    let (head, _) =
        weir_tests::http::request_tls(w.admin_port, &pki.ca_file, "POST", "/ui/login", login)
            .unwrap();
    let cookie = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"));
    let cookie = cookie.unwrap_or_else(|| panic!("no cookie: {head}"));
    assert!(
        cookie.contains("; Secure") && cookie.contains("HttpOnly"),
        "{cookie}"
    );

    // A certificate from another CA, then SIGHUP.
    let other = weir_tests::pki::Ca::new("Next Admin CA");
    let other_ca = other.write(&pki.dir.path().join("next-ca.pem"));
    let (ok, out) = cli_over_tls(&w, &other_ca, &["health"]);
    assert!(!ok && out.contains("certificate"), "not trusted yet: {out}");
    let next = other.server(pki.dir.path(), "next");
    std::fs::copy(&next.cert, &pki.server.cert).unwrap();
    std::fs::copy(&next.key, &pki.server.key).unwrap();
    w.sighup_until("TLS certificates reloaded");
    let (ok, out) = cli_over_tls(&w, &other_ca, &["health"]);
    assert!(ok, "the new certificate serves: {out}");
    let (ok, out) = cli_over_tls(&w, &pki.ca_file, &["health"]);
    assert!(!ok, "the old one no longer: {out}");
}
