//! TCP connections to backends, from the node's namespace or from inside a network resource's
//! namespace (a gateway with `network`): a socket belongs to the namespace it was created in,
//! so a short-lived thread enters the namespace (setns), creates the socket and hands it back;
//! the connect then runs on the async runtime like any other.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};

/// How long a backend connect may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// An unconnected TCP socket for `addr`'s family, made inside the namespace `netns`
/// (`/run/netns/<netns>`), or in the caller's when `None`.
pub fn socket_in(netns: Option<&str>, addr: SocketAddr) -> io::Result<TcpSocket> {
    let domain = socket2::Domain::for_address(addr);
    let make = move || socket2::Socket::new(domain, socket2::Type::STREAM, None);
    let sock = match netns {
        None => make()?,
        Some(ns) => {
            let path = format!("/run/netns/{ns}");
            let f = std::fs::File::open(&path)
                .map_err(|e| io::Error::new(e.kind(), format!("namespace {ns}: {e}")))?;
            std::thread::spawn(move || -> io::Result<socket2::Socket> {
                // This thread only: it ends right after, the runtime's threads stay put.
                nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| io::Error::other(format!("entering {path}: {e}")))?;
                make()
            })
            .join()
            .map_err(|_| io::Error::other("namespace thread panicked"))??
        }
    };
    sock.set_nonblocking(true)?;
    sock.set_tcp_nodelay(true)?;
    let std: std::net::TcpStream = sock.into();
    Ok(TcpSocket::from_std_stream(std))
}

/// Connects to `addr` from the namespace `netns` (see [`socket_in`]).
pub async fn connect(netns: Option<&str>, addr: SocketAddr) -> io::Result<TcpStream> {
    let sock = socket_in(netns, addr)?;
    match tokio::time::timeout(CONNECT_TIMEOUT, sock.connect(addr)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connecting to {addr}: timed out"),
        )),
    }
}
