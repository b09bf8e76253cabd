//! The server name of a TLS ClientHello, read from the first bytes a client sends, so that a
//! connection can be routed (passed through, or terminated with the right certificate) before
//! any TLS state exists. Untrusted input: every length is bounds-checked, nothing panics.

/// Largest ClientHello accepted (a handshake message may span several records; real ones are
/// well under this even with post-quantum key shares).
pub const MAX_HELLO: usize = 64 * 1024;

/// Why no server name could be read (yet).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SniError {
    /// More bytes are needed.
    #[error("incomplete ClientHello")]
    Incomplete,
    /// The bytes are not a TLS handshake.
    #[error("not a TLS handshake")]
    NotTls,
    /// A TLS handshake that is not a well-formed ClientHello.
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
    /// Larger than [`MAX_HELLO`].
    #[error("ClientHello larger than {MAX_HELLO} bytes")]
    TooLarge,
}

/// A cursor over a byte slice whose reads fail instead of panicking.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], SniError> {
        if self.buf.len() < n {
            return Err(SniError::Malformed(what));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<usize, SniError> {
        Ok(usize::from(self.take(1, what)?[0]))
    }

    fn u16(&mut self, what: &'static str) -> Result<usize, SniError> {
        let b = self.take(2, what)?;
        Ok(usize::from(u16::from_be_bytes([b[0], b[1]])))
    }

    /// A vector with a `len_bytes`-byte length prefix.
    fn vec(&mut self, len_bytes: usize, what: &'static str) -> Result<Reader<'a>, SniError> {
        let n = if len_bytes == 1 {
            self.u8(what)?
        } else {
            self.u16(what)?
        };
        Ok(Reader {
            buf: self.take(n, what)?,
        })
    }
}

/// Reads the server name (lowercased) from the start of a TLS connection: `Ok(None)` for a
/// ClientHello without SNI, [`SniError::Incomplete`] when `buf` ends before the ClientHello.
pub fn client_hello_sni(buf: &[u8]) -> Result<Option<String>, SniError> {
    // Reassemble the handshake message from its records.
    let mut hs: Vec<u8> = Vec::new();
    let mut rest = buf;
    loop {
        if let Some(total) = handshake_len(&hs)? {
            if hs.len() >= total {
                return parse_client_hello(&hs[4..total]);
            }
        }
        if rest.len() < 5 {
            if rest.first().is_some_and(|b| *b != 0x16) {
                return Err(SniError::NotTls);
            }
            return Err(SniError::Incomplete);
        }
        if rest[0] != 0x16 || rest[1] != 0x03 {
            return Err(SniError::NotTls);
        }
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        if len == 0 {
            return Err(SniError::Malformed("empty record"));
        }
        if rest.len() < 5 + len {
            return Err(SniError::Incomplete);
        }
        hs.extend_from_slice(&rest[5..5 + len]);
        if hs.len() > MAX_HELLO {
            return Err(SniError::TooLarge);
        }
        rest = &rest[5 + len..];
    }
}

/// Total length of the handshake message (header included) once its header is there.
fn handshake_len(hs: &[u8]) -> Result<Option<usize>, SniError> {
    if hs.len() < 4 {
        return Ok(None);
    }
    if hs[0] != 0x01 {
        return Err(SniError::Malformed(
            "first handshake message is not a ClientHello",
        ));
    }
    let len = (usize::from(hs[1]) << 16) | (usize::from(hs[2]) << 8) | usize::from(hs[3]);
    if len + 4 > MAX_HELLO {
        return Err(SniError::TooLarge);
    }
    Ok(Some(len + 4))
}

fn parse_client_hello(body: &[u8]) -> Result<Option<String>, SniError> {
    let mut r = Reader { buf: body };
    r.take(2, "version")?;
    r.take(32, "random")?;
    r.vec(1, "session id")?;
    r.vec(2, "cipher suites")?;
    r.vec(1, "compression methods")?;
    if r.buf.is_empty() {
        // A ClientHello without extensions (SSL 3 style): no SNI.
        return Ok(None);
    }
    let mut exts = r.vec(2, "extensions")?;
    while !exts.buf.is_empty() {
        let ty = exts.u16("extension type")?;
        let mut data = exts.vec(2, "extension data")?;
        if ty != 0 {
            continue;
        }
        let mut list = data.vec(2, "server name list")?;
        while !list.buf.is_empty() {
            let kind = list.u8("server name type")?;
            let name = list.vec(2, "server name")?;
            if kind == 0 {
                return host_name(name.buf).map(Some);
            }
        }
        return Ok(None);
    }
    Ok(None)
}

/// A DNS host name: ASCII letters, digits, `-`, `_` and dots, at most 253 bytes.
fn host_name(b: &[u8]) -> Result<String, SniError> {
    let ok = !b.is_empty()
        && b.len() <= 253
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
    if !ok {
        return Err(SniError::Malformed("server name is not a host name"));
    }
    Ok(String::from_utf8_lossy(b).to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A ClientHello as rustls writes it, for `name`.
    fn real_hello(name: &str) -> Vec<u8> {
        use std::sync::Arc;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let cfg = rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let server = rustls::pki_types::ServerName::try_from(name.to_string()).expect("name");
        let mut c = rustls::ClientConnection::new(Arc::new(cfg), server).expect("client");
        let mut out = Vec::new();
        c.write_tls(&mut out).expect("write");
        out
    }

    #[test]
    fn reads_the_name_rustls_sends() {
        let h = real_hello("Web.Example.Com");
        assert_eq!(
            client_hello_sni(&h).expect("sni").as_deref(),
            Some("web.example.com")
        );
        // Every strict prefix asks for more bytes.
        for n in 0..h.len() {
            assert_eq!(client_hello_sni(&h[..n]), Err(SniError::Incomplete), "{n}");
        }
    }

    #[test]
    fn a_hello_split_over_records_is_reassembled() {
        let h = real_hello("a.b.io");
        let body = &h[5..];
        let (x, y) = body.split_at(40);
        let mut split = Vec::new();
        for part in [x, y] {
            split.extend_from_slice(&[0x16, 0x03, 0x01]);
            split.extend_from_slice(&u16::try_from(part.len()).expect("len").to_be_bytes());
            split.extend_from_slice(part);
        }
        assert_eq!(
            client_hello_sni(&split).expect("sni").as_deref(),
            Some("a.b.io")
        );
    }

    #[test]
    fn an_ip_address_hello_has_no_name() {
        // rustls sends no SNI for an IP address.
        let h = real_hello("10.1.2.3");
        assert_eq!(client_hello_sni(&h), Ok(None));
    }

    #[test]
    fn plain_http_is_not_tls() {
        assert_eq!(
            client_hello_sni(b"GET / HTTP/1.1\r\n"),
            Err(SniError::NotTls)
        );
        assert_eq!(client_hello_sni(b"G"), Err(SniError::NotTls));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = client_hello_sni(&b);
        }

        #[test]
        fn mutated_hellos_never_panic(pos in 0usize..400, val in any::<u8>(), cut in 0usize..400) {
            let mut h = real_hello("mutate.example.org");
            let p = pos % h.len();
            h[p] = val;
            h.truncate(h.len() - cut.min(h.len()));
            let _ = client_hello_sni(&h);
        }

        #[test]
        fn names_round_trip(name in "[a-z]([a-z0-9-]{0,18}[a-z0-9])?(\\.[a-z]([a-z0-9-]{0,18}[a-z0-9])?){1,3}") {
            let h = real_hello(&name);
            prop_assert_eq!(client_hello_sni(&h), Ok(Some(name)));
        }
    }
}
