//! The serial console: QEMU serves it on a unix socket; the agent copies it into
//! `console.log`, rotated at 8 MiB (upstream's size) to `console.log.1`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::watch;

/// Upstream's rotation size.
pub const ROTATE_AT: u64 = 8 << 20;

/// The log file of a VM directory.
pub fn log_path(dir: &Path) -> PathBuf {
    dir.join("console.log")
}

/// Copies the console at `sock` into `log` until `stop` turns true; reconnects when QEMU
/// restarts (a new socket) and gives up when the VM is gone for good.
pub async fn run(sock: PathBuf, log: PathBuf, rotate_at: u64, mut stop: watch::Receiver<bool>) {
    loop {
        if *stop.borrow() {
            return;
        }
        let stream = match UnixStream::connect(&sock).await {
            Ok(s) => s,
            Err(_) => {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
                    _ = stop.changed() => return,
                }
            }
        };
        if let Err(e) = copy(stream, &log, rotate_at, &mut stop).await {
            tracing::warn!(log = %log.display(), "console copy: {e}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

async fn copy(
    mut s: UnixStream,
    log: &Path,
    rotate_at: u64,
    stop: &mut watch::Receiver<bool>,
) -> std::io::Result<()> {
    async fn open(log: &Path) -> std::io::Result<tokio::fs::File> {
        tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .await
    }
    let mut f = open(log).await?;
    let mut size = f.metadata().await?.len();
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = tokio::select! {
            r = s.read(&mut buf) => r?,
            _ = stop.changed() => return Ok(()),
        };
        if n == 0 {
            return Ok(());
        }
        if size > 0 && size + n as u64 > rotate_at {
            f.flush().await?;
            let mut old = log.as_os_str().to_owned();
            old.push(".1");
            tokio::fs::rename(log, PathBuf::from(old)).await?;
            f = open(log).await?;
            size = 0;
        }
        f.write_all(&buf[..n]).await?;
        size += n as u64;
    }
}

/// The last `max` bytes of the console (rotated part included when the current file is short).
pub fn tail(dir: &Path, max: usize) -> std::io::Result<Vec<u8>> {
    let cur = std::fs::read(log_path(dir)).unwrap_or_default();
    let mut out = if cur.len() < max {
        let mut old = std::fs::read(dir.join("console.log.1")).unwrap_or_default();
        let keep = max - cur.len();
        if old.len() > keep {
            old.drain(..old.len() - keep);
        }
        old
    } else {
        Vec::new()
    };
    let start = cur.len().saturating_sub(max);
    out.extend_from_slice(&cur[start..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::net::UnixListener;

    #[tokio::test]
    async fn copies_and_rotates() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("c.sock");
        let l = UnixListener::bind(&sock).unwrap();
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(run(sock, log_path(d.path()), 100, rx));
        let (mut s, _) = l.accept().await.unwrap();
        let wait_for = |n: usize| {
            let dir = d.path().to_path_buf();
            async move {
                for _ in 0..200 {
                    if tail(&dir, 1000).unwrap().len() == n {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        s.write_all(&[b'a'; 80]).await.unwrap();
        wait_for(80).await;
        s.write_all(&[b'b'; 40]).await.unwrap();
        wait_for(120).await;
        let all = tail(d.path(), 1000).unwrap();
        assert_eq!(all.len(), 120);
        assert_eq!(
            std::fs::metadata(d.path().join("console.log.1"))
                .unwrap()
                .len(),
            80
        );
        assert_eq!(std::fs::metadata(log_path(d.path())).unwrap().len(), 40);
        assert_eq!(tail(d.path(), 10).unwrap(), vec![b'b'; 10]);
        tx.send(true).unwrap();
        task.await.unwrap();
    }
}
