//! Hostile input over raw TCP: every case ends in an error reply or a closed connection,
//! and the server keeps serving others. Reads have generous timeouts only so that a bug
//! shows up as a failure instead of a hung test run.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use common::*;
use rand::{Rng, RngCore, SeedableRng};

const GUARD: Duration = Duration::from_secs(30);

fn raw(s: &TestServer) -> TcpStream {
    let t = TcpStream::connect(s.addr).unwrap();
    t.set_read_timeout(Some(GUARD)).unwrap();
    t
}

/// Sends bytes (ignoring a reset while sending) and returns everything the server sends
/// until it closes the connection.
fn exchange_until_close(s: &TestServer, data: &[u8]) -> Vec<u8> {
    let mut t = raw(s);
    let _ = t.write_all(data);
    let mut out = Vec::new();
    match t.read_to_end(&mut out) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("server neither replied nor closed: {e}"),
    }
    out
}

fn still_serving(s: &TestServer) {
    let mut c = s.con();
    assert_eq!(
        q(&mut c, &["PING"]),
        Ok(redis::Value::SimpleString("PONG".into()))
    );
}

#[test]
fn bad_framing_gets_an_error_and_a_close() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(config(dir.path()));
    let cases: &[(&[u8], &str)] = &[
        (b"*1025\r\n", "-Too many arguments"),
        (b"*1\r\n$4294967296\r\n", "-Payload too large"),
        (
            b"*1\r\n$99999999999999999999999999\r\n",
            "-Protocol error: invalid length",
        ),
        (b"*-5\r\n", "-Protocol error: invalid length"),
        (b"PING\r\n", "-Protocol error: expected array"),
        (b":1\r\n", "-Protocol error: expected array"),
        (b"+OK\r\n", "-Protocol error: expected array"),
        (b"*2\r\n:1\r\n", "-Protocol error: expected bulk string"),
        (b"*1\r\n$1\r\nPINGPONG\r\n", "-Protocol error: missing CRLF"),
        (b"*0\r\n", "-Protocol error: empty request"),
    ];
    for (input, want) in cases {
        let out = exchange_until_close(&s, input);
        let out = String::from_utf8_lossy(&out);
        assert!(
            out.starts_with(want),
            "{:?} -> {out:?}",
            String::from_utf8_lossy(input)
        );
    }
    // A valid command before the bad frame still gets its reply, in order.
    let out = exchange_until_close(&s, b"*1\r\n$4\r\nPING\r\n*1025\r\n");
    assert!(String::from_utf8_lossy(&out).starts_with("+PONG\r\n-Too many arguments"));
    still_serving(&s);
}

#[test]
fn oversized_payload_is_refused_before_it_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(config(dir.path()));
    // Claims 9 MB; the server must answer after the header, without waiting for the bytes.
    let mut t = raw(&s);
    t.write_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$9000000\r\n")
        .unwrap();
    let mut buf = [0u8; 128];
    let n = t.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("-Payload too large"));
    // Streaming the 9 MB anyway: error or reset, never a hang.
    let mut big = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$9000000\r\n".to_vec();
    big.resize(big.len() + 9_000_000, b'a');
    let out = exchange_until_close(&s, &big);
    assert!(out.is_empty() || out.starts_with(b"-Payload too large"));
    // Exactly 8 MiB is accepted and read back intact.
    let mut c = s.con();
    let v = vec![0xabu8; 8 << 20];
    assert_eq!(qb(&mut c, &[b"SET", b"big", &v]), bulk(b"big"));
    assert_eq!(
        qb(&mut c, &[b"GET", b"big"]),
        Ok(redis::Value::BulkString(v))
    );
    still_serving(&s);
}

#[test]
fn max_arguments_and_wrong_argument_types() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(config(dir.path()));
    let mut c = s.con();
    // 1024 arguments (MGET + 1023 keys) is the limit and works.
    let keys: Vec<String> = (0..1023).map(|i| format!("k{i}")).collect();
    let mut args: Vec<&str> = vec!["MGET"];
    args.extend(keys.iter().map(String::as_str));
    let Ok(redis::Value::Array(v)) = q(&mut c, &args) else {
        panic!()
    };
    assert_eq!(v.len(), 1023);
    // Wrong arity / values: error replies, connection stays usable.
    assert_eq!(q(&mut c, &["SET", "k"]), e("Unexpected arguments"));
    assert_eq!(
        q(&mut c, &["SET", "k", "v", "notatime"]),
        e("Invalid timestamp")
    );
    assert_eq!(q(&mut c, &["DATA", "RAW", "x", "y"]), e("Invalid fileid"));
    assert_eq!(q(&mut c, &["WAIT", "SET", "abc"]), e("Invalid timeout"));
    assert_eq!(
        q(&mut c, &["NSSET", "a", "maxsize"]),
        e("Unexpected arguments")
    );
    assert_eq!(
        qb(&mut c, &[b"SELECT", b"\xff\xfe"]),
        e("This name is not allowed")
    );
    assert_eq!(
        q(&mut c, &["HISTORY", "k", "short"]),
        e("Invalid arguments")
    );
    assert_eq!(
        q(&mut c, &["PING"]),
        Ok(redis::Value::SimpleString("PONG".into()))
    );
}

#[test]
fn truncated_frames_and_random_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(config(dir.path()));
    let full = b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n";
    for cut in 1..full.len() {
        // Half a request, then EOF: the server closes without executing it.
        let mut t = raw(&s);
        t.write_all(&full[..cut]).unwrap();
        t.shutdown(Shutdown::Write).unwrap();
        let mut out = Vec::new();
        t.read_to_end(&mut out).unwrap();
        assert!(out.is_empty(), "cut {cut}: {out:?}");
    }
    let mut c = s.con();
    assert_eq!(
        q(&mut c, &["EXISTS", "key"]),
        int(0),
        "truncated SET never executed"
    );

    let mut rng = rand::rngs::StdRng::seed_from_u64(0x2db);
    for i in 0..300 {
        let len = rng.gen_range(1..2048);
        let mut data = vec![0u8; len];
        rng.fill_bytes(&mut data);
        if i % 2 == 0 {
            data[0] = b'*'; // get past the first check more often
        }
        let mut t = raw(&s);
        let _ = t.write_all(&data);
        let _ = t.shutdown(Shutdown::Write);
        let mut out = Vec::new();
        match t.read_to_end(&mut out) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("case {i}: no reply and no close: {e}"),
        }
    }
    still_serving(&s);
}

#[test]
fn slow_reader_does_not_block_others() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(config(dir.path()));
    let mut c = s.con();
    let v = vec![b'x'; 1 << 20];
    assert_eq!(qb(&mut c, &[b"SET", b"big", &v]), bulk(b"big"));
    // This client asks for 256 MiB of replies and never reads them.
    let mut slow = raw(&s);
    let get = b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n".repeat(256);
    slow.set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let _ = slow.write_all(&get);
    // Others, on the same namespace, are served meanwhile.
    for i in 0..200 {
        let k = format!("k{i}");
        assert_eq!(q(&mut c, &["SET", &k, "v"]), bulk(k.as_bytes()));
        assert_eq!(q(&mut c, &["GET", &k]), bulk(b"v"));
    }
    let mut c2 = s.con();
    assert_eq!(qb(&mut c2, &[b"LENGTH", b"big"]), int(1 << 20));
    drop(slow);
    still_serving(&s);
}
