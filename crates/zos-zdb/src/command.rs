//! Typed commands: turns the argument list of one request into a [`Command`].
//!
//! Names match case-insensitively and exactly (upstream's prefix matching, where `S` runs
//! `SET`, is not copied). Argument-count errors use upstream's texts.

use bytes::Bytes;

use crate::Mode;

/// Longest namespace name, as upstream.
pub const MAX_NS_NAME: usize = 128;
/// Most keys in one MGET, as upstream.
pub const MAX_MGET: usize = 1023;

/// How `AUTH` authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthArg {
    /// `AUTH <password>`
    Plain(Bytes),
    /// `AUTH SECURE CHALLENGE`
    Challenge,
    /// `AUTH SECURE <sha1hex>`
    Secure(Bytes),
}

/// How `SELECT` authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SelectAuth {
    /// No password.
    None,
    /// `SELECT ns <password>`
    Plain(Bytes),
    /// `SELECT ns SECURE <sha1hex>`
    Secure(Bytes),
}

/// A namespace property changed by `NSSET`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NsProp {
    /// Payload byte limit, 0 = unlimited.
    MaxSize(u64),
    /// `None` clears the password (`*`).
    Password(Option<String>),
    /// Public namespaces can be read without the password.
    Public(bool),
    /// Write once, read many: no overwrite, no delete.
    Worm(bool),
    /// Index mode, only on an empty namespace.
    Mode(Mode),
    /// Read-only.
    Lock(bool),
    /// No access at all.
    Freeze(bool),
    /// Secret for encryption at rest (raw bytes decoded from hex).
    EncryptionKey(Vec<u8>),
}

/// One parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)] // Variants are the commands of the protocol, documented in docs/zdb.md.
pub enum Command {
    Ping,
    Echo(Bytes),
    /// `HELLO [protover [AUTH user pass] [SETNAME name]]` (Redis's handshake; RESP2 only).
    Hello {
        proto: Option<u64>,
        password: Option<Bytes>,
    },
    Time,
    Auth(AuthArg),
    Info,
    Stop,
    Set {
        key: Bytes,
        value: Bytes,
        timestamp: Option<u32>,
    },
    Get(Bytes),
    MGet(Vec<Bytes>),
    /// `DEL key [timestamp]` (the timestamp is admin-only, as upstream: replication).
    Del {
        key: Bytes,
        timestamp: Option<u32>,
    },
    Exists(Bytes),
    Check(Bytes),
    Length(Bytes),
    KeyTime(Bytes),
    KeyCur(Bytes),
    Scan(Option<Bytes>),
    RScan(Option<Bytes>),
    KScan(Bytes),
    History {
        key: Bytes,
        cursor: Option<Bytes>,
    },
    DbSize,
    NsNew(String),
    NsDel(String),
    NsList,
    NsInfo(String),
    NsSet {
        ns: String,
        prop: NsProp,
    },
    NsJump,
    Select {
        ns: String,
        auth: SelectAuth,
    },
    Flush,
    Wait {
        command: String,
        timeout_ms: u64,
    },
    IndexDirty {
        reset: bool,
    },
    DataRaw {
        fileid: u32,
        offset: u32,
    },
    /// `RELOAD <ns>`: reopen a namespace from its files.
    Reload(String),
    /// `HOOKS`: recent hook runs.
    Hooks,
    /// `MIRROR [<ns> <entries> <last-entry-signature>]…`: this connection becomes a
    /// replication feed.
    Mirror(Vec<(String, u64, String)>),
    /// `MASTER`: this connection is the replication source of this server.
    Master,
}

impl Command {
    /// Upper-case name, used by `WAIT` and statistics.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Ping => "PING",
            Command::Echo(_) => "ECHO",
            Command::Hello { .. } => "HELLO",
            Command::Time => "TIME",
            Command::Auth(_) => "AUTH",
            Command::Info => "INFO",
            Command::Stop => "STOP",
            Command::Set { .. } => "SET",
            Command::Get(_) => "GET",
            Command::MGet(_) => "MGET",
            Command::Del { .. } => "DEL",
            Command::Exists(_) => "EXISTS",
            Command::Check(_) => "CHECK",
            Command::Length(_) => "LENGTH",
            Command::KeyTime(_) => "KEYTIME",
            Command::KeyCur(_) => "KEYCUR",
            Command::Scan(_) => "SCAN",
            Command::RScan(_) => "RSCAN",
            Command::KScan(_) => "KSCAN",
            Command::History { .. } => "HISTORY",
            Command::DbSize => "DBSIZE",
            Command::NsNew(_) => "NSNEW",
            Command::NsDel(_) => "NSDEL",
            Command::NsList => "NSLIST",
            Command::NsInfo(_) => "NSINFO",
            Command::NsSet { .. } => "NSSET",
            Command::NsJump => "NSJUMP",
            Command::Select { .. } => "SELECT",
            Command::Flush => "FLUSH",
            Command::Wait { .. } => "WAIT",
            Command::IndexDirty { .. } => "INDEX",
            Command::DataRaw { .. } => "DATA",
            Command::Reload(_) => "RELOAD",
            Command::Hooks => "HOOKS",
            Command::Mirror(_) => "MIRROR",
            Command::Master => "MASTER",
        }
    }
}

/// Names accepted by `WAIT` (plus `*`).
pub const COMMAND_NAMES: &[&str] = &[
    "PING", "ECHO", "HELLO", "TIME", "AUTH", "INFO", "STOP", "SET", "SETX", "GET", "MGET", "DEL",
    "EXISTS", "CHECK", "LENGTH", "KEYTIME", "KEYCUR", "SCAN", "SCANX", "RSCAN", "KSCAN", "HISTORY",
    "DBSIZE", "NSNEW", "NSDEL", "NSLIST", "NSINFO", "NSSET", "NSJUMP", "SELECT", "FLUSH", "WAIT",
    "INDEX", "DATA", "RELOAD", "HOOKS", "MIRROR", "MASTER",
];

/// A request that is well framed but not a valid command; the text is the error reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CommandError(pub &'static str);

const UNEXPECTED: CommandError = CommandError("Unexpected arguments");
/// Upstream's answer to a key longer than [`crate::namespace::MAX_KEY`], for every key command.
const INVALID_KEY: CommandError = CommandError("Invalid key");

/// A key argument: over the limit is `-Invalid key` (upstream), never a silent miss.
fn key_arg(b: &Bytes) -> Result<Bytes, CommandError> {
    if b.len() > crate::namespace::MAX_KEY {
        return Err(INVALID_KEY);
    }
    Ok(b.clone())
}

fn parse_ts(b: &[u8]) -> Result<u32, CommandError> {
    u32::try_from(parse_u64(b, "Invalid timestamp")?).map_err(|_| CommandError("Invalid timestamp"))
}

fn expect_args(args: &[Bytes], n: usize) -> Result<(), CommandError> {
    if args.len() == n {
        Ok(())
    } else {
        Err(UNEXPECTED)
    }
}

fn ns_name(b: &Bytes) -> Result<String, CommandError> {
    if b.len() > MAX_NS_NAME {
        return Err(CommandError("Namespace too long"));
    }
    String::from_utf8(b.to_vec()).map_err(|_| CommandError("This name is not allowed"))
}

fn ascii_str(b: &[u8]) -> Result<&str, CommandError> {
    std::str::from_utf8(b).map_err(|_| CommandError("Invalid argument"))
}

fn flag(b: &[u8]) -> bool {
    b.first() == Some(&b'1')
}

fn parse_u64(b: &[u8], err: &'static str) -> Result<u64, CommandError> {
    ascii_str(b)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(CommandError(err))
}

/// Parses the arguments of one request (the first is the command name).
pub fn parse(args: &[Bytes]) -> Result<Command, CommandError> {
    let Some(name) = args.first() else {
        return Err(CommandError("Command not supported"));
    };
    let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
    let one = |n: usize| expect_args(args, n).map(|()| args[1].clone());
    let key = |n: usize| expect_args(args, n).and_then(|()| key_arg(&args[1]));
    let cmd = if is("GET") {
        Command::Get(key(2)?)
    } else if is("SET") || is("SETX") {
        let timestamp = match args.len() {
            3 => None,
            4 => Some(parse_ts(&args[3])?),
            _ => return Err(UNEXPECTED),
        };
        Command::Set {
            key: key_arg(&args[1])?,
            value: args[2].clone(),
            timestamp,
        }
    } else if is("PING") {
        Command::Ping
    } else if is("ECHO") {
        Command::Echo(one(2)?)
    } else if is("HELLO") {
        parse_hello(args)?
    } else if is("TIME") {
        Command::Time
    } else if is("AUTH") {
        match args.len() {
            2 => Command::Auth(AuthArg::Plain(args[1].clone())),
            3 if args[1].eq_ignore_ascii_case(b"SECURE") => {
                if args[2].eq_ignore_ascii_case(b"CHALLENGE") {
                    Command::Auth(AuthArg::Challenge)
                } else {
                    Command::Auth(AuthArg::Secure(args[2].clone()))
                }
            }
            _ => return Err(UNEXPECTED),
        }
    } else if is("INFO") {
        Command::Info
    } else if is("STOP") {
        Command::Stop
    } else if is("MGET") {
        if args.len() < 2 {
            return Err(UNEXPECTED);
        }
        if args.len() - 1 > MAX_MGET {
            return Err(CommandError("Too many keys (at most 1023)"));
        }
        Command::MGet(args[1..].to_vec())
    } else if is("DEL") {
        let timestamp = match args.len() {
            2 => None,
            3 => Some(parse_ts(&args[2])?),
            _ => return Err(UNEXPECTED),
        };
        Command::Del {
            key: key_arg(&args[1])?,
            timestamp,
        }
    } else if is("EXISTS") {
        Command::Exists(key(2)?)
    } else if is("CHECK") {
        Command::Check(key(2)?)
    } else if is("LENGTH") {
        Command::Length(key(2)?)
    } else if is("KEYTIME") {
        Command::KeyTime(key(2)?)
    } else if is("KEYCUR") {
        Command::KeyCur(key(2)?)
    } else if is("SCAN") || is("SCANX") || is("RSCAN") {
        let cursor = match args.len() {
            1 => None,
            2 => Some(args[1].clone()),
            _ => return Err(UNEXPECTED),
        };
        if is("RSCAN") {
            Command::RScan(cursor)
        } else {
            Command::Scan(cursor)
        }
    } else if is("KSCAN") {
        Command::KScan(one(2)?)
    } else if is("HISTORY") {
        match args.len() {
            2 | 3 => Command::History {
                key: key_arg(&args[1])?,
                cursor: args.get(2).cloned(),
            },
            _ => return Err(CommandError("Invalid arguments")),
        }
    } else if is("DBSIZE") {
        Command::DbSize
    } else if is("NSNEW") {
        Command::NsNew(ns_name(&one(2)?)?)
    } else if is("NSDEL") {
        Command::NsDel(ns_name(&one(2)?)?)
    } else if is("NSLIST") {
        Command::NsList
    } else if is("NSINFO") {
        Command::NsInfo(ns_name(&one(2)?)?)
    } else if is("NSSET") {
        expect_args(args, 4)?;
        Command::NsSet {
            ns: ns_name(&args[1])?,
            prop: parse_prop(&args[2], &args[3])?,
        }
    } else if is("NSJUMP") {
        Command::NsJump
    } else if is("SELECT") {
        let auth = match args.len() {
            2 => SelectAuth::None,
            3 => SelectAuth::Plain(args[2].clone()),
            4 if args[2].eq_ignore_ascii_case(b"SECURE") => SelectAuth::Secure(args[3].clone()),
            _ => return Err(CommandError("Invalid argument")),
        };
        Command::Select {
            ns: ns_name(&args[1])?,
            auth,
        }
    } else if is("FLUSH") {
        Command::Flush
    } else if is("WAIT") {
        parse_wait(args)?
    } else if is("INDEX") {
        match args.len() {
            2 if args[1].eq_ignore_ascii_case(b"DIRTY") => Command::IndexDirty { reset: false },
            3 if args[1].eq_ignore_ascii_case(b"DIRTY")
                && args[2].eq_ignore_ascii_case(b"RESET") =>
            {
                Command::IndexDirty { reset: true }
            }
            _ => return Err(CommandError("Unknown INDEX subcommand")),
        }
    } else if is("DATA") {
        if args.len() != 4 || !args[1].eq_ignore_ascii_case(b"RAW") {
            return Err(CommandError("Unknown DATA subcommand"));
        }
        let fileid = u32::try_from(parse_u64(&args[2], "Invalid fileid")?)
            .map_err(|_| CommandError("Invalid fileid"))?;
        let offset = u32::try_from(parse_u64(&args[3], "Invalid offset")?)
            .map_err(|_| CommandError("Invalid offset"))?;
        Command::DataRaw { fileid, offset }
    } else if is("RELOAD") {
        Command::Reload(ns_name(&one(2)?)?)
    } else if is("HOOKS") {
        expect_args(args, 1)?;
        Command::Hooks
    } else if is("MIRROR") {
        if args.len() % 3 != 1 {
            return Err(CommandError("Invalid arguments"));
        }
        let mut have = Vec::with_capacity(args.len() / 3);
        for t in args[1..].chunks(3) {
            have.push((
                ns_name(&t[0])?,
                parse_u64(&t[1], "Invalid arguments")?,
                ascii_str(&t[2])?.to_string(),
            ));
        }
        Command::Mirror(have)
    } else if is("MASTER") {
        expect_args(args, 1)?;
        Command::Master
    } else {
        return Err(CommandError("Command not supported"));
    };
    Ok(cmd)
}

/// `HELLO`'s arguments, with Redis's error texts (clients match on them).
fn parse_hello(args: &[Bytes]) -> Result<Command, CommandError> {
    let Some(p) = args.get(1) else {
        return Ok(Command::Hello {
            proto: None,
            password: None,
        });
    };
    let proto = parse_u64(p, "ERR Protocol version is not an integer or out of range")?;
    let mut password = None;
    let mut i = 2;
    while i < args.len() {
        let opt = &args[i];
        if opt.eq_ignore_ascii_case(b"AUTH") && i + 2 < args.len() {
            // 0-db has no users: the user name is ignored, the password is the admin's.
            password = Some(args[i + 2].clone());
            i += 3;
        } else if opt.eq_ignore_ascii_case(b"SETNAME") && i + 1 < args.len() {
            i += 2;
        } else {
            return Err(CommandError("ERR Syntax error in HELLO option"));
        }
    }
    Ok(Command::Hello {
        proto: Some(proto),
        password,
    })
}

fn parse_wait(args: &[Bytes]) -> Result<Command, CommandError> {
    if args.len() != 2 && args.len() != 3 {
        return Err(CommandError("Invalid arguments"));
    }
    let want = ascii_str(&args[1])?.to_ascii_uppercase();
    let command = match want.as_str() {
        "*" => "*".to_string(),
        "SETX" => "SET".to_string(),
        "SCANX" => "SCAN".to_string(),
        w if COMMAND_NAMES.contains(&w) => want,
        _ => return Err(CommandError("Unknown command to watch")),
    };
    let timeout_ms = match args.get(2) {
        None => 5000,
        Some(t) => {
            let t = parse_u64(t, "Invalid timeout")?;
            if !(100..=30 * 60 * 1000).contains(&t) {
                return Err(CommandError("Invalid timeout"));
            }
            t
        }
    };
    Ok(Command::Wait {
        command,
        timeout_ms,
    })
}

fn parse_prop(prop: &[u8], value: &[u8]) -> Result<NsProp, CommandError> {
    let prop = ascii_str(prop)?.to_ascii_lowercase();
    if prop == "encryption-key" {
        let key = hex::decode(value).map_err(|_| CommandError("Invalid value"))?;
        if !(16..=64).contains(&key.len()) {
            return Err(CommandError("Invalid value (16 to 64 bytes, hex encoded)"));
        }
        return Ok(NsProp::EncryptionKey(key));
    }
    if value.len() > 63 {
        return Err(CommandError("Invalid value"));
    }
    let text = ascii_str(value)?;
    Ok(match prop.as_str() {
        "maxsize" => NsProp::MaxSize(parse_u64(value, "Invalid value")?),
        "password" => NsProp::Password((text != "*").then(|| text.to_string())),
        "public" => NsProp::Public(flag(value)),
        "worm" => NsProp::Worm(flag(value)),
        "lock" => NsProp::Lock(flag(value)),
        "freeze" => NsProp::Freeze(flag(value)),
        "mode" => NsProp::Mode(match text {
            "user" => Mode::User,
            "seq" => Mode::Seq,
            _ => return Err(CommandError("Unsupported mode")),
        }),
        _ => return Err(CommandError("Invalid property")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Command, CommandError> {
        let v: Vec<Bytes> = args
            .iter()
            .map(|a| Bytes::copy_from_slice(a.as_bytes()))
            .collect();
        parse(&v)
    }

    #[test]
    fn parses_commands() {
        assert_eq!(p(&["ping"]), Ok(Command::Ping));
        assert_eq!(p(&["get", "k"]), Ok(Command::Get(Bytes::from_static(b"k"))));
        assert_eq!(p(&["get"]), Err(UNEXPECTED));
        assert_eq!(
            p(&["S", "k", "v"]),
            Err(CommandError("Command not supported"))
        );
        assert_eq!(
            p(&["AUTH", "secure", "challenge"]),
            Ok(Command::Auth(AuthArg::Challenge))
        );
        assert_eq!(
            p(&["NSSET", "a", "mode", "seq"]),
            Ok(Command::NsSet {
                ns: "a".into(),
                prop: NsProp::Mode(Mode::Seq)
            })
        );
        assert_eq!(
            p(&["NSSET", "a", "password", "*"]),
            Ok(Command::NsSet {
                ns: "a".into(),
                prop: NsProp::Password(None)
            })
        );
        assert_eq!(
            p(&["WAIT", "setx"]),
            Ok(Command::Wait {
                command: "SET".into(),
                timeout_ms: 5000
            })
        );
        assert_eq!(
            p(&["WAIT", "SET", "99"]),
            Err(CommandError("Invalid timeout"))
        );
        assert_eq!(
            p(&["WAIT", "NOPE"]),
            Err(CommandError("Unknown command to watch"))
        );
        assert_eq!(
            p(&["DATA", "RAW", "1", "28"]),
            Ok(Command::DataRaw {
                fileid: 1,
                offset: 28
            })
        );
        assert!(p(&["SET", "k", "v", "notanumber"]).is_err());
        let long = "k".repeat(256);
        for cmd in [
            "GET", "EXISTS", "CHECK", "LENGTH", "KEYTIME", "DEL", "KEYCUR",
        ] {
            assert_eq!(p(&[cmd, &long]), Err(INVALID_KEY), "{cmd}");
            assert!(p(&[cmd, &long[1..]]).is_ok(), "{cmd}");
        }
        assert_eq!(p(&["SET", &long, "v"]), Err(INVALID_KEY));
        assert_eq!(
            p(&["DEL", "k", "7"]),
            Ok(Command::Del {
                key: Bytes::from_static(b"k"),
                timestamp: Some(7)
            })
        );
        assert_eq!(
            p(&["MIRROR", "default", "3", "-"]),
            Ok(Command::Mirror(vec![("default".into(), 3, "-".into())]))
        );
        assert!(p(&["MIRROR", "default", "3"]).is_err());
        assert!(p(&["NSSET", "a", "encryption-key", "zz"]).is_err());
        assert_eq!(
            p(&["hello", "3", "AUTH", "default", "pw", "SETNAME", "x"]),
            Ok(Command::Hello {
                proto: Some(3),
                password: Some(Bytes::from_static(b"pw"))
            })
        );
        assert!(p(&["HELLO", "two"]).is_err());
        assert!(p(&["HELLO", "2", "AUTH", "u"]).is_err());
        assert_eq!(
            p(&["INDEX", "DIRTY", "RESET"]),
            Ok(Command::IndexDirty { reset: true })
        );
    }
}
