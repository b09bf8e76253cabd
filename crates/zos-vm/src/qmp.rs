//! A QMP client (QEMU Machine Protocol: JSON lines over the VM's unix socket).
//!
//! One connection per call sequence: QEMU serves one QMP client per socket at a time, and a
//! short-lived connection never blocks a later caller (the agent after a restart, an operator).

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

/// QMP failures.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// Socket I/O.
    #[error("qmp {path}: {source}")]
    Io {
        /// Socket path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// QEMU closed the connection or sent something that is not QMP.
    #[error("qmp {0}: protocol: {1}")]
    Protocol(String, String),
    /// QEMU answered with an error.
    #[error("qmp {cmd}: {class}: {desc}")]
    Command {
        /// Command name.
        cmd: String,
        /// Error class.
        class: String,
        /// Description.
        desc: String,
    },
    /// No answer in time.
    #[error("qmp {0}: timed out")]
    Timeout(String),
}

/// A negotiated QMP connection.
pub struct Qmp {
    path: String,
    rx: BufReader<OwnedReadHalf>,
    tx: OwnedWriteHalf,
}

/// Upper bound for one QMP exchange (QEMU answers in microseconds unless wedged).
const TIMEOUT: Duration = Duration::from_secs(10);

impl Qmp {
    /// Connects to `path`, reads the greeting and leaves capabilities negotiation mode.
    pub async fn connect(path: &Path) -> Result<Qmp, QmpError> {
        let p = path.display().to_string();
        let stream = tokio::time::timeout(TIMEOUT, UnixStream::connect(path))
            .await
            .map_err(|_| QmpError::Timeout(p.clone()))?
            .map_err(|source| QmpError::Io {
                path: p.clone(),
                source,
            })?;
        let (r, w) = stream.into_split();
        let mut q = Qmp {
            path: p,
            rx: BufReader::new(r),
            tx: w,
        };
        let greeting = q.read_msg().await?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol(q.path.clone(), "no QMP greeting".into()));
        }
        q.execute("qmp_capabilities", None).await?;
        Ok(q)
    }

    async fn read_msg(&mut self) -> Result<Value, QmpError> {
        let mut line = String::new();
        let n = tokio::time::timeout(TIMEOUT, self.rx.read_line(&mut line))
            .await
            .map_err(|_| QmpError::Timeout(self.path.clone()))?
            .map_err(|source| QmpError::Io {
                path: self.path.clone(),
                source,
            })?;
        if n == 0 {
            return Err(QmpError::Protocol(
                self.path.clone(),
                "connection closed".into(),
            ));
        }
        serde_json::from_str(&line)
            .map_err(|e| QmpError::Protocol(self.path.clone(), format!("bad JSON: {e}")))
    }

    /// Runs `cmd` with `args`, returning its `return` value. Events received meanwhile are
    /// skipped.
    pub async fn execute(&mut self, cmd: &str, args: Option<Value>) -> Result<Value, QmpError> {
        let mut msg = json!({ "execute": cmd });
        if let Some(a) = args {
            msg["arguments"] = a;
        }
        let mut bytes = msg.to_string().into_bytes();
        bytes.push(b'\n');
        self.tx
            .write_all(&bytes)
            .await
            .map_err(|source| QmpError::Io {
                path: self.path.clone(),
                source,
            })?;
        loop {
            let m = self.read_msg().await?;
            if m.get("event").is_some() {
                continue;
            }
            if let Some(r) = m.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = m.get("error") {
                let s = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                return Err(QmpError::Command {
                    cmd: cmd.into(),
                    class: s("class"),
                    desc: s("desc"),
                });
            }
            return Err(QmpError::Protocol(
                self.path.clone(),
                format!("unexpected message {m}"),
            ));
        }
    }

    /// `query-status`: the run state (`running`, `paused`, `shutdown`, …).
    pub async fn status(&mut self) -> Result<String, QmpError> {
        let r = self.execute("query-status", None).await?;
        Ok(r.get("status")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_string())
    }
}

/// Runs one command on the VM behind `path` (connect, negotiate, execute).
pub async fn call(path: &Path, cmd: &str, args: Option<Value>) -> Result<Value, QmpError> {
    Qmp::connect(path).await?.execute(cmd, args).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::UnixListener;

    /// A scripted QMP server: greeting, capabilities, an event, then an error.
    #[tokio::test]
    async fn negotiates_skips_events_and_reports_errors() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("q.sock");
        let l = UnixListener::bind(&sock).unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            s.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
                .await
                .unwrap();
            let mut buf = vec![0u8; 1024];
            let n = s.read(&mut buf).await.unwrap();
            assert!(String::from_utf8_lossy(&buf[..n]).contains("qmp_capabilities"));
            s.write_all(b"{\"return\": {}}\n").await.unwrap();
            let _ = s.read(&mut buf).await.unwrap();
            s.write_all(b"{\"event\": \"STOP\"}\n{\"return\": {\"status\": \"paused\", \"running\": false}}\n")
                .await
                .unwrap();
            let _ = s.read(&mut buf).await.unwrap();
            s.write_all(b"{\"error\": {\"class\": \"GenericError\", \"desc\": \"nope\"}}\n")
                .await
                .unwrap();
            let _ = s.read(&mut buf).await.unwrap();
            s.write_all(b"not json\n").await.unwrap();
        });
        let mut q = Qmp::connect(&sock).await.unwrap();
        assert_eq!(q.status().await.unwrap(), "paused");
        let e = q.execute("cont", None).await.unwrap_err();
        assert_eq!(e.to_string(), "qmp cont: GenericError: nope");
        let e = q.execute("stop", None).await.unwrap_err();
        assert!(matches!(e, QmpError::Protocol(..)), "{e}");
    }
}
