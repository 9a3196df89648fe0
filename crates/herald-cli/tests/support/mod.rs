//! A `herald serve` process of the test's own, and clients for it.
//!
//! [`Served::start`] runs the real binary on a free loopback port in a
//! temporary directory (its SQLite store under `./herald-data` there),
//! waits until `/healthz` answers, and kills it when dropped. [`Ws`] is a
//! WebSocket client speaking the JSON frames; [`openapi_check`] validates a
//! response body against the server's own `/openapi.json`.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// How long a frame or a start-up may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// A running `herald serve`.
pub struct Served {
    child: Option<Child>,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub port: u16,
    pub base: String,
    pub env: Vec<(String, String)>,
    log: PathBuf,
}

/// The `herald` binary run with `args` in `server`'s directory, as a client
/// of it (`HERALD_SERVER`).
pub fn herald(args: &[&str], server: &Served) -> Output {
    Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(args)
        .env("HERALD_SERVER", &server.base)
        .current_dir(&server.dir)
        .output()
        .unwrap()
}

/// A free loopback port (bound and released; the server takes it next).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Served {
    /// `herald serve` with `env` set, in a fresh temporary directory.
    pub async fn start(env: &[(&str, &str)]) -> Served {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        let mut s = Served::spawn(&dir, env, free_port());
        s._tmp = Some(tmp);
        s.wait_healthy().await;
        s
    }

    /// The same server again, on the same directory and port (after a stop).
    pub async fn restart(&mut self) {
        let env: Vec<(String, String)> = self.env.clone();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let fresh = Served::spawn(&self.dir, &env, self.port);
        let mut fresh = fresh;
        self.child = fresh.child.take();
        self.wait_healthy().await;
    }

    fn spawn(dir: &Path, env: &[(&str, &str)], port: u16) -> Served {
        let log = dir.join(format!("serve-{}.log", std::process::id()));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
        cmd.arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .unwrap(),
            );
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("herald serve starts");
        Served {
            child: Some(child),
            dir: dir.to_owned(),
            _tmp: None,
            port,
            base: format!("http://127.0.0.1:{port}"),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            log,
        }
    }

    async fn wait_healthy(&mut self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        let client = reqwest::Client::new();
        loop {
            if let Ok(r) = client.get(format!("{}/healthz", self.base)).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("herald serve exited with {status}:\n{}", self.log());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "herald serve did not come up:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The process id of the running server.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The server's resident memory now, in bytes (`VmRSS`).
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("a VmRSS line");
        kb * 1024
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Send SIGTERM and wait for the process to exit; its exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        child.wait().unwrap()
    }

    /// Kill the process at once (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The WebSocket URL, with `token` when given.
    pub fn ws_url(&self, token: Option<&str>) -> String {
        match token {
            Some(t) => format!("ws://127.0.0.1:{}/v1/ws?token={t}", self.port),
            None => format!("ws://127.0.0.1:{}/v1/ws", self.port),
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `(status, JSON body)` of a request.
pub async fn send(req: reqwest::RequestBuilder) -> (u16, Value) {
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

/// POST `body` as JSON.
pub async fn post(url: &str, body: &Value) -> (u16, Value) {
    send(reqwest::Client::new().post(url).json(body)).await
}

/// GET.
pub async fn get(url: &str) -> (u16, Value) {
    send(reqwest::Client::new().get(url)).await
}

/// A WebSocket connection speaking herald's frames. Frames passed over by
/// [`Ws::recv_op`] are kept, in order, for later calls.
pub struct Ws {
    stream: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    kept: std::collections::VecDeque<Value>,
}

impl Ws {
    /// Connect to `url`.
    pub async fn connect(url: &str) -> Ws {
        let (stream, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("websocket connects");
        Ws::from_stream(stream)
    }

    /// A connection made elsewhere.
    pub fn from_stream(
        stream: tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
    ) -> Ws {
        Ws {
            stream,
            kept: Default::default(),
        }
    }

    /// Send one frame.
    pub async fn send(&mut self, frame: Value) {
        self.stream
            .send(Message::text(frame.to_string()))
            .await
            .expect("send frame");
    }

    /// Send raw text.
    pub async fn send_text(&mut self, text: &str) {
        self.stream
            .send(Message::text(text.to_owned()))
            .await
            .expect("send text");
    }

    /// The next JSON frame, failing the test after [`WAIT`].
    pub async fn recv(&mut self) -> Value {
        if let Some(f) = self.kept.pop_front() {
            return f;
        }
        self.read().await
    }

    async fn read(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(WAIT, self.stream.next())
                .await
                .expect("a frame in time")
                .expect("the socket stays open")
                .expect("a readable frame");
            match msg {
                Message::Text(t) => return serde_json::from_str(t.as_str()).expect("JSON frame"),
                Message::Close(c) => panic!("closed by the server: {c:?}"),
                _ => continue,
            }
        }
    }

    /// The next frame whose `op` is `op`; others before it are kept.
    pub async fn recv_op(&mut self, op: &str) -> Value {
        if let Some(i) = self.kept.iter().position(|f| f["op"] == op) {
            return self.kept.remove(i).expect("present");
        }
        loop {
            let f = self.read().await;
            if f["op"] == op {
                return f;
            }
            self.kept.push_back(f);
        }
    }

    /// Subscribe and wait for the confirmation.
    pub async fn subscribe(&mut self, id: &str, pattern: &str, extra: Value) {
        let mut frame = json!({"op": "subscribe", "id": id, "pattern": pattern});
        if let Value::Object(m) = extra {
            frame.as_object_mut().unwrap().extend(m);
        }
        self.send(frame).await;
        let f = self.recv().await;
        assert_eq!(f["op"], "subscribed", "{f}");
    }

    /// Close the connection from this side.
    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
    }

    /// Close the connection and wait until the server has closed its side
    /// (everything it does when a client goes is done).
    pub async fn close_and_wait(mut self) {
        let _ = self.stream.close(None).await;
        tokio::time::timeout(WAIT, async {
            while let Some(Ok(_)) = self.stream.next().await {}
        })
        .await
        .expect("the server closes its side in time");
    }
}

/// Validate `body` against the schema `/openapi.json` gives for `method`
/// `path` (the template, e.g. `/v1/topics/{topic}/events`) answering `status`.
pub fn openapi_check(doc: &Value, method: &str, path: &str, status: u16, body: &Value) {
    let op = &doc["paths"][path][method];
    assert!(op.is_object(), "no {method} {path} in the OpenAPI document");
    let response = &op["responses"][status.to_string()];
    assert!(
        response.is_object(),
        "{method} {path} documents no {status} response"
    );
    let schema = &response["content"]["application/json"]["schema"];
    assert!(
        schema.is_object(),
        "{method} {path} {status} has no JSON schema"
    );
    let mut root = schema.clone();
    root.as_object_mut()
        .unwrap()
        .insert("components".into(), doc["components"].clone());
    let validator = jsonschema::validator_for(&root).expect("a valid schema");
    let errors: Vec<String> = validator
        .iter_errors(body)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{method} {path} {status}: body does not match the document: {errors:?}\n{body}"
    );
}

/// A WebSocket member of group `workers` on `jobs.*` holding one delivery
/// it does not settle (an event published to `jobs.run` for it): the
/// connection and the event frame.
pub async fn holding_member(s: &Served) -> (Ws, Value) {
    let mut ws = Ws::connect(&s.ws_url(None)).await;
    ws.subscribe(
        "w",
        "jobs.*",
        serde_json::json!({"group": "workers", "start": "earliest", "max_in_flight": 1}),
    )
    .await;
    let body = serde_json::json!({"payload": 1});
    let (status, _) = post(&s.url("/v1/topics/jobs.run/events"), &body).await;
    assert_eq!(status, 201);
    let event = ws.recv_op("event").await;
    (ws, event)
}

/// What `herald token NAME --secret S` prints as the hash of `secret`.
pub fn token_hash(secret: &str) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["token", "t", "--secret", secret])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("sha256"))
        .expect("a sha256 line");
    line.split('"').nth(1).unwrap().to_owned()
}
