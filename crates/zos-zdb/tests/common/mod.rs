//! Test harness: a real server on its own tokio runtime, on 127.0.0.1 port 0 and a unix
//! socket in a temporary directory, restartable on the same directories.
#![allow(dead_code, clippy::unwrap_used, missing_docs)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use redis::Value;
use tokio::sync::oneshot;
use zos_zdb::{Server, ServerConfig};

pub struct TestServer {
    pub addr: SocketAddr,
    pub socket: PathBuf,
    pub cfg: ServerConfig,
    rt: Option<tokio::runtime::Runtime>,
    stop: Option<oneshot::Sender<()>>,
    done: Option<oneshot::Receiver<Result<(), zos_zdb::ZdbError>>>,
}

pub fn config(dir: &Path) -> ServerConfig {
    ServerConfig {
        data_dir: dir.join("data"),
        index_dir: dir.join("index"),
        listen: Some("127.0.0.1:0".parse().unwrap()),
        socket: Some(dir.join("zdb.sock")),
        admin_password: Some("root".into()),
        ..ServerConfig::default()
    }
}

impl TestServer {
    pub fn start(cfg: ServerConfig) -> TestServer {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let server = rt.block_on(Server::bind(cfg.clone())).unwrap();
        let addr = server.local_addr().unwrap();
        let (stop, stop_rx) = oneshot::channel::<()>();
        let (done_tx, done) = oneshot::channel();
        rt.spawn(async move {
            let r = server
                .run(async move {
                    let _ = stop_rx.await;
                })
                .await;
            let _ = done_tx.send(r);
        });
        TestServer {
            addr,
            socket: cfg.socket.clone().unwrap_or_default(),
            cfg,
            rt: Some(rt),
            stop: Some(stop),
            done: Some(done),
        }
    }

    pub fn con(&self) -> redis::Connection {
        redis::Client::open(format!("redis://{}/", self.addr))
            .unwrap()
            .get_connection()
            .unwrap()
    }

    pub fn admin(&self) -> redis::Connection {
        let mut c = self.con();
        assert_eq!(q(&mut c, &["AUTH", "root"]), ok());
        c
    }

    /// Clean shutdown; returns what `run` returned.
    pub fn stop(mut self) -> ServerConfig {
        self.shutdown();
        self.cfg.clone()
    }

    fn shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let (Some(rt), Some(done)) = (self.rt.take(), self.done.take()) {
            let r = rt.block_on(done).expect("server task ended");
            r.expect("server run returned an error");
            rt.shutdown_background();
        }
    }

    /// Stops and starts again on the same directories (new port).
    pub fn restart(self) -> TestServer {
        let cfg = self.stop();
        TestServer::start(cfg)
    }

    /// Simulates a crash: the runtime is torn down without the clean shutdown path (no final
    /// flush or fsync); what the kernel already has stays, as after `kill -9`.
    pub fn crash(mut self) -> ServerConfig {
        // Keep the stop sender alive: dropping it would start the clean shutdown.
        let keep = self.stop.take();
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
        drop(keep);
        self.cfg.clone()
    }

    /// Whether the server task already ended (STOP).
    pub fn wait_ended(&mut self) -> bool {
        let rt = self.rt.as_ref().unwrap();
        let done = self.done.as_mut().unwrap();
        rt.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(10), done)
                .await
                .is_ok()
        })
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(std::time::Duration::from_secs(5));
        }
    }
}

/// Runs a command, returning the raw value or the server's error text as `Err`.
pub fn q(c: &mut redis::Connection, args: &[&str]) -> Result<Value, String> {
    qb(c, &args.iter().map(|a| a.as_bytes()).collect::<Vec<_>>())
}

pub fn qb(c: &mut redis::Connection, args: &[&[u8]]) -> Result<Value, String> {
    let mut cmd = redis::cmd(std::str::from_utf8(args[0]).unwrap());
    for a in &args[1..] {
        cmd.arg(*a);
    }
    match cmd.query::<Value>(c) {
        Ok(v) => Ok(v),
        Err(e) => Err(err_text(&e)),
    }
}

/// The server's error message (redis-rs splits it into code and detail).
pub fn err_text(e: &redis::RedisError) -> String {
    match (e.code(), e.detail()) {
        // A one-word error has no detail; redis-rs fills in a placeholder.
        (Some(code), Some(d)) if d != "Unknown extension error encountered" => {
            format!("{code} {d}")
        }
        (Some(code), None) => code.to_string(),
        _ => e
            .to_string()
            .trim_end_matches(": Unknown extension error encountered")
            .to_string(),
    }
}

pub fn ok() -> Result<Value, String> {
    Ok(Value::Okay)
}

pub fn bulk(b: &[u8]) -> Result<Value, String> {
    Ok(Value::BulkString(b.to_vec()))
}

pub fn int(n: i64) -> Result<Value, String> {
    Ok(Value::Int(n))
}

pub fn nil() -> Result<Value, String> {
    Ok(Value::Nil)
}

pub fn e(msg: &str) -> Result<Value, String> {
    Err(msg.to_string())
}

pub fn text(v: Result<Value, String>) -> String {
    match v {
        Ok(Value::BulkString(b)) => String::from_utf8(b).unwrap(),
        Ok(Value::SimpleString(s)) => s,
        other => panic!("expected text, got {other:?}"),
    }
}

pub fn bytes(v: Result<Value, String>) -> Vec<u8> {
    match v {
        Ok(Value::BulkString(b)) => b,
        other => panic!("expected bulk, got {other:?}"),
    }
}
