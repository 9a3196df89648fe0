//! `herald serve` with TLS (rustls): a self-signed certificate made with
//! the machine's `openssl`, checked by `curl --cacert`; plain HTTP to the
//! TLS port gets nothing.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn tls_serves_https_with_the_configured_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let port = support::free_port();
    let mut server = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--store",
            "memory://",
        ])
        .env("HERALD_TLS_CERT", &cert)
        .env("HERALD_TLS_KEY", &key)
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let curl = |url: &str| {
        Command::new("curl")
            .args(["-s", "--max-time", "5", "--cacert"])
            .arg(&cert)
            .arg(url)
            .output()
            .unwrap()
    };
    let https = format!("https://localhost:{port}/healthz");
    let deadline = Instant::now() + Duration::from_secs(20);
    let answer = loop {
        let out = curl(&https);
        if out.status.success() {
            break String::from_utf8(out.stdout).unwrap();
        }
        assert!(Instant::now() < deadline, "no HTTPS answer");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(answer.contains("\"status\":\"ok\""), "{answer}");
    let plain = curl(&format!("http://localhost:{port}/healthz"));
    assert!(!String::from_utf8_lossy(&plain.stdout).contains("\"status\""));
    let _ = server.kill();
    let _ = server.wait();
}
