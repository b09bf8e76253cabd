//! The serial console: QEMU serves it on a unix socket; the agent copies it into
//! `console.log`, rotated at 8 MiB (upstream's size) to `console.log.1`, and serves it at
//! the VM's `console_url` (`<NR gateway>:<20000 + last octet>`, inside the network resource's
//! namespace, so only members of the private network reach it, as upstream).
//!
//! QEMU's socket takes one client, so the copier is the only one: it fans the output out to
//! every connected console client and passes their keystrokes to the guest. A client that
//! sends an HTTP `GET` gets the log's tail as text (a browser or curl); any other client is a
//! raw, interactive serial line (`nc`, `socat`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::{broadcast, mpsc, watch};

/// Upstream's rotation size.
pub const ROTATE_AT: u64 = 8 << 20;

/// What a new interactive client is shown first: enough to see the prompt and last lines.
const RAW_BACKLOG: usize = 4 << 10;

/// What an HTTP client gets.
const HTTP_TAIL: usize = 64 << 10;

/// How long a new client has to say it speaks HTTP before it is taken as a raw terminal
/// (raw clients say nothing until their user types).
const SNIFF: Duration = Duration::from_millis(300);

/// The log file of a VM directory.
pub fn log_path(dir: &Path) -> PathBuf {
    dir.join("console.log")
}

/// The console of one VM: output fanned out to clients, their input queued to the guest.
#[derive(Clone)]
pub struct Hub {
    out: broadcast::Sender<Vec<u8>>,
    input: mpsc::Sender<Vec<u8>>,
}

/// The copier's end of a [`Hub`].
pub struct HubRx {
    input: mpsc::Receiver<Vec<u8>>,
}

/// A hub for one VM's console and the receiver its copier ([`run`]) drains.
pub fn hub() -> (Hub, HubRx) {
    let (out, _) = broadcast::channel(256);
    let (input, rx) = mpsc::channel(64);
    (Hub { out, input }, HubRx { input: rx })
}

/// Copies the console at `sock` into `log` (and to the hub's clients) until `stop` turns
/// true; reconnects when QEMU restarts (a new socket) and gives up when the VM is gone for
/// good.
pub async fn run(
    sock: PathBuf,
    log: PathBuf,
    rotate_at: u64,
    hub: Hub,
    mut rx: HubRx,
    mut stop: watch::Receiver<bool>,
) {
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
        if let Err(e) = copy(stream, &log, rotate_at, &hub, &mut rx, &mut stop).await {
            tracing::warn!(log = %log.display(), "console copy: {e}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

async fn copy(
    s: UnixStream,
    log: &Path,
    rotate_at: u64,
    hub: &Hub,
    rx: &mut HubRx,
    stop: &mut watch::Receiver<bool>,
) -> std::io::Result<()> {
    async fn open(log: &Path) -> std::io::Result<tokio::fs::File> {
        tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .await
    }
    let (mut r, mut w) = s.into_split();
    let mut f = open(log).await?;
    let mut size = f.metadata().await?.len();
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = tokio::select! {
            r = r.read(&mut buf) => r?,
            Some(keys) = rx.input.recv() => {
                w.write_all(&keys).await?;
                continue;
            }
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
        // tokio's File hands writes to a background thread: flush so that a reader of the
        // log (`zos vm logs`, an HTTP client) sees what clients were just sent.
        f.flush().await?;
        size += n as u64;
        // No client: the send fails, which is fine.
        let _ = hub.out.send(buf[..n].to_vec());
    }
}

/// Serves the console of the VM in `dir` on `addr`, bound inside network namespace `netns`
/// (the network resource's) when given, until `stop`. The address is the NR's gateway, which
/// exists once the network is up: binding is retried until it works.
pub async fn serve(
    netns: Option<String>,
    addr: SocketAddr,
    dir: PathBuf,
    hub: Hub,
    mut stop: watch::Receiver<bool>,
) {
    let mut warned = false;
    let listener = loop {
        if *stop.borrow() {
            return;
        }
        match bind(netns.clone(), addr).await {
            Ok(l) => break l,
            Err(e) => {
                if !warned {
                    tracing::warn!(%addr, "console listener: {e}; retrying");
                    warned = true;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    };
    tracing::debug!(%addr, "console served");
    loop {
        let (conn, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(%addr, "console accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        tracing::info!(%addr, %peer, "console client");
        let (dir, hub, stop) = (dir.clone(), hub.clone(), stop.clone());
        tokio::spawn(async move {
            if let Err(e) = client(conn, &dir, &hub, stop).await {
                tracing::debug!(%peer, "console client: {e}");
            }
        });
    }
}

/// A listener on `addr` in namespace `netns`: a socket belongs to the namespace it is made
/// in, so a thread enters the namespace, binds, and hands the socket back.
async fn bind(netns: Option<String>, addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let std_listener = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
        if let Some(ns) = netns {
            let f = std::fs::File::open(format!("/run/netns/{ns}"))
                .map_err(|e| std::io::Error::new(e.kind(), format!("namespace {ns}: {e}")))?;
            // A fresh thread: a pool thread left in the namespace would taint later tasks.
            return std::thread::spawn(move || -> std::io::Result<_> {
                nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| std::io::Error::other(format!("entering {ns}: {e}")))?;
                let l = std::net::TcpListener::bind(addr)?;
                l.set_nonblocking(true)?;
                Ok(l)
            })
            .join()
            .map_err(|_| std::io::Error::other("namespace thread panicked"))?;
        }
        let l = std::net::TcpListener::bind(addr)?;
        l.set_nonblocking(true)?;
        Ok(l)
    })
    .await
    .map_err(|e| std::io::Error::other(format!("bind task: {e}")))??;
    tokio::net::TcpListener::from_std(std_listener)
}

async fn client(
    mut conn: TcpStream,
    dir: &Path,
    hub: &Hub,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    // Subscribe before reading the backlog: nothing falls between the two (a line may show
    // twice, never be missing).
    let mut out = hub.out.subscribe();
    let mut first = vec![0u8; 1024];
    let n = match tokio::time::timeout(SNIFF, conn.read(&mut first)).await {
        Ok(r) => r?,
        Err(_) => 0,
    };
    first.truncate(n);
    if first.starts_with(b"GET ") || first.starts_with(b"HEAD ") {
        let body = tail(dir, HTTP_TAIL)?;
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain; charset=utf-8\r\n\
             content-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n",
            body.len()
        );
        conn.write_all(head.as_bytes()).await?;
        if first.starts_with(b"GET ") {
            conn.write_all(&body).await?;
        }
        return conn.shutdown().await;
    }
    conn.write_all(&tail(dir, RAW_BACKLOG)?).await?;
    if !first.is_empty() {
        let _ = hub.input.send(first).await;
    }
    let (mut r, mut w) = conn.into_split();
    let mut buf = vec![0u8; 4096];
    loop {
        tokio::select! {
            m = out.recv() => match m {
                Ok(bytes) => w.write_all(&bytes).await?,
                // A slow client misses output rather than holding the guest up.
                Err(broadcast::error::RecvError::Lagged(k)) => {
                    w.write_all(format!("\r\n[zos: {k} console chunks skipped]\r\n").as_bytes()).await?;
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
            n = r.read(&mut buf) => {
                let n = n?;
                if n == 0 {
                    return Ok(());
                }
                if hub.input.send(buf[..n].to_vec()).await.is_err() {
                    return Ok(());
                }
            }
            _ = stop.changed() => return Ok(()),
        }
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
        let (hub, hrx) = hub();
        let task = tokio::spawn(run(sock, log_path(d.path()), 100, hub, hrx, rx));
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

    /// The console server: a raw client sees the backlog and live output and its keys reach
    /// the guest's serial socket; an HTTP client gets the log's tail.
    #[tokio::test]
    async fn serves_raw_and_http_clients() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("c.sock");
        let l = UnixListener::bind(&sock).unwrap();
        let (tx, rx) = watch::channel(false);
        let (hub, hrx) = hub();
        let copier = tokio::spawn(run(
            sock,
            log_path(d.path()),
            ROTATE_AT,
            hub.clone(),
            hrx,
            rx.clone(),
        ));
        let (mut qemu, _) = l.accept().await.unwrap();
        qemu.write_all(b"booting\n").await.unwrap();
        for _ in 0..200 {
            if tail(d.path(), 100).unwrap() == b"booting\n" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let server = tokio::spawn(serve(None, addr, d.path().to_path_buf(), hub, rx));
        let mut c = loop {
            match TcpStream::connect(addr).await {
                Ok(c) => break c,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while !got.ends_with(b"booting\n") {
            let n = c.read(&mut buf).await.unwrap();
            assert!(n > 0, "console closed before the backlog");
            got.extend_from_slice(&buf[..n]);
        }
        qemu.write_all(b"login: ").await.unwrap();
        got.clear();
        while !got.ends_with(b"login: ") {
            let n = c.read(&mut buf).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
        c.write_all(b"root\n").await.unwrap();
        let mut keys = [0u8; 5];
        qemu.read_exact(&mut keys).await.unwrap();
        assert_eq!(&keys, b"root\n");

        let mut h = TcpStream::connect(addr).await.unwrap();
        h.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut page = Vec::new();
        h.read_to_end(&mut page).await.unwrap();
        let page = String::from_utf8(page).unwrap();
        assert!(page.starts_with("HTTP/1.1 200 OK"), "{page}");
        assert!(page.ends_with("booting\nlogin: "), "{page}");

        tx.send(true).unwrap();
        copier.await.unwrap();
        server.await.unwrap();
    }
}
