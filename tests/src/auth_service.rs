//! A real HTTP authentication service for the `auth-http` plugin's tests: a thread per
//! connection, HTTP/1.1, one request each. `POST /auth` admits the users it knows with
//! their password; `POST /acl` denies topics under `secret/`. It can be made slow, and
//! counts what it was asked.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

#[derive(Default)]
struct State {
    delay_ms: AtomicU64,
    auth_requests: AtomicU64,
    acl_requests: AtomicU64,
    stop: AtomicBool,
}

pub struct AuthService {
    pub port: u16,
    state: Arc<State>,
}

impl AuthService {
    /// Starts the service on a free port of 127.0.0.1.
    pub fn start() -> AuthService {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the auth service");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(State::default());
        let s = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.stop.load(SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let s = s.clone();
                std::thread::spawn(move || serve(conn, &s));
            }
        });
        AuthService { port, state }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Every answer waits this long from now on.
    pub fn set_delay(&self, d: Duration) {
        self.state.delay_ms.store(d.as_millis() as u64, SeqCst);
    }

    pub fn auth_requests(&self) -> u64 {
        self.state.auth_requests.load(SeqCst)
    }

    pub fn acl_requests(&self) -> u64 {
        self.state.acl_requests.load(SeqCst)
    }
}

impl Drop for AuthService {
    fn drop(&mut self) {
        self.state.stop.store(true, SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve(conn: TcpStream, s: &State) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(&conn);
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let path = line.split(' ').nth(1).unwrap_or("").to_owned();
    let (mut length, mut chunked) = (0, false);
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = h.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
            if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.trim().eq_ignore_ascii_case("chunked");
            }
        }
    }
    let body = match chunked {
        true => read_chunked(&mut reader),
        false => {
            let mut body = vec![0; length];
            reader.read_exact(&mut body).ok().map(|_| body)
        }
    };
    let Some(body) = body else {
        return;
    };
    let question: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let answer = match path.as_str() {
        "/auth" => {
            s.auth_requests.fetch_add(1, SeqCst);
            authenticate(&question)
        }
        "/acl" => {
            s.acl_requests.fetch_add(1, SeqCst);
            authorize(&question)
        }
        _ => None,
    };
    std::thread::sleep(Duration::from_millis(s.delay_ms.load(SeqCst)));
    let (status, body) = match answer {
        Some(a) => ("200 OK", a.to_string()),
        None => ("404 Not Found", String::new()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = (&conn).write_all(response.as_bytes());
}

fn read_chunked(reader: &mut impl BufRead) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        reader.read_line(&mut size).ok()?;
        let n = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
        let mut chunk = vec![0; n + 2];
        reader.read_exact(&mut chunk).ok()?;
        if n == 0 {
            return Some(body);
        }
        body.extend_from_slice(&chunk[..n]);
    }
}

/// alice/wonderland and any `load-*` user with password `pw` are admitted; alice gets
/// an attribute. Anyone else is denied.
fn authenticate(q: &Value) -> Option<Value> {
    let user = q["username"].as_str().unwrap_or("");
    let password = q["password"].as_str().unwrap_or("");
    let known = (user == "alice" && password == "wonderland")
        || (user.starts_with("load-") && password == "pw");
    Some(match known {
        true => json!({"result": "allow", "attributes": {"team": "looking-glass"}}),
        false => json!({"result": "deny"}),
    })
}

fn authorize(q: &Value) -> Option<Value> {
    let topic = q["topic"].as_str().unwrap_or("");
    Some(match topic.starts_with("secret/") {
        true => json!({"result": "deny"}),
        false => json!({"result": "allow"}),
    })
}
