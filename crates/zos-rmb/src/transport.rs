//! Client side of the relay WebSocket: connect (`ws://`, or `wss://` with rustls and the roots
//! of [`crate::tls`]) and log in with the challenge–response of [`crate::frame`].

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use zos_types::crypto::KeyPair;

use crate::frame::{Frame, Role, auth_message};

/// A connected client socket.
pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long connect + login may take.
pub(crate) const LOGIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a login failed.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum LoginError {
    /// Network or protocol trouble: worth retrying.
    #[error("{0}")]
    Transient(String),
    /// The relay refused our credentials.
    #[error("relay refused login: {0}")]
    Rejected(String),
}

/// Connects to `url` and logs in as `twin`/`session`.
pub(crate) async fn connect_and_login(
    url: &str,
    role: Role,
    twin: u32,
    session: Option<&str>,
    key: &KeyPair,
    max_message: usize,
) -> Result<Ws, LoginError> {
    let work = async {
        let cfg = WebSocketConfig::default()
            .max_message_size(Some(max_message))
            .max_frame_size(Some(max_message));
        let connector = if url.starts_with("wss://") {
            let tls = crate::tls::client_config()
                .map_err(|e| LoginError::Transient(format!("{url}: {e}")))?;
            Some(Connector::Rustls(tls))
        } else {
            Some(Connector::Plain)
        };
        let (mut ws, _) =
            tokio_tungstenite::connect_async_tls_with_config(url, Some(cfg), true, connector)
                .await
                .map_err(|e| LoginError::Transient(format!("connect {url}: {e}")))?;
        let Frame::Challenge { nonce, domain } = next_frame(&mut ws).await? else {
            return Err(LoginError::Transient(format!(
                "{url}: expected a challenge"
            )));
        };
        // The host we dialed is signed too: the relay refuses it unless it is its own, so our
        // answer is useless to anyone who passed another relay's challenge on to us.
        let host = crate::directory::relay_domain(url).to_ascii_lowercase();
        // And the TLS channel we hold: a man in the middle terminating TLS holds another one,
        // so this answer is useless on its own connection to the relay.
        let channel = match ws.get_ref() {
            MaybeTlsStream::Rustls(tls) => {
                Some(crate::tls::channel_binding(tls.get_ref().1).ok_or_else(|| {
                    LoginError::Transient(format!("{url}: no TLS exporter on this connection"))
                })?)
            }
            _ => None,
        };
        let msg = auth_message(
            &nonce,
            &domain,
            &host,
            channel.as_ref(),
            role,
            twin,
            session,
        );
        let auth = Frame::Auth {
            role,
            twin,
            session: session.map(str::to_owned),
            host,
            signature: key.sign(&msg),
        }
        .encode()
        .map_err(|e| LoginError::Transient(e.to_string()))?;
        ws.send(Message::Binary(auth))
            .await
            .map_err(|e| LoginError::Transient(format!("{url}: send login: {e}")))?;
        match next_frame(&mut ws).await? {
            Frame::Welcome { .. } => Ok(ws),
            Frame::Rejected { reason } => Err(LoginError::Rejected(reason)),
            _ => Err(LoginError::Transient(format!(
                "{url}: unexpected answer to login"
            ))),
        }
    };
    tokio::time::timeout(LOGIN_TIMEOUT, work)
        .await
        .map_err(|_| LoginError::Transient(format!("{url}: login timed out")))?
}

async fn next_frame(ws: &mut Ws) -> Result<Frame, LoginError> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(b))) => {
                return Frame::decode(&b)
                    .map_err(|e| LoginError::Transient(format!("bad frame from relay: {e}")));
            }
            Some(Ok(Message::Close(_))) | None => {
                return Err(LoginError::Transient("relay closed the connection".into()));
            }
            Some(Err(e)) => return Err(LoginError::Transient(e.to_string())),
            Some(Ok(_)) => continue,
        }
    }
}

/// Sends one encoded frame (federation links of the relay).
#[cfg(feature = "relay")]
pub(crate) async fn send(ws: &mut Ws, frame: bytes::Bytes) -> Result<(), String> {
    ws.send(Message::Binary(frame))
        .await
        .map_err(|e| e.to_string())
}
