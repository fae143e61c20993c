//! The plaintext line protocol (README.md, "Protocol") as pure functions: [`check`] finds
//! where the next line ends without consuming anything, [`parse`] turns one
//! complete line into a [`Request`], and [`Reply::encode`] renders replies.
//! No IO lives here, so the fuzz target and table tests drive it directly.
//!
//! **Values the line protocol cannot carry.** Values are arbitrary bytes on
//! gRPC (and will be on the etcd API), so a stored value may contain `\n` or
//! `\r`. Such a value is never written raw: it is sent as
//! `VALUE_B64 <standard base64 with padding>` on one line. A value without
//! CR or LF is sent exactly as before, `VALUE <value>`. So every reply is
//! exactly one line, whatever was stored.

use bytes::Bytes;

/// What [`check`] found at the start of the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// A full line is available: `line_len` bytes excluding the terminator,
    /// `consumed` including it.
    Complete {
        /// Bytes of the line without `\n` / `\r\n`.
        line_len: usize,
        /// Bytes to drop from the buffer after parsing.
        consumed: usize,
    },
    /// No newline yet and the line is still within the limit.
    Incomplete,
    /// No newline within `max_line_bytes`: the caller discards up to the next `\n`.
    TooLong,
}

/// Looks for the end of the first line in `buf`.
pub fn check(buf: &[u8], max_line_bytes: usize) -> Check {
    let window = &buf[..buf.len().min(max_line_bytes.saturating_add(2))];
    match window.iter().position(|&b| b == b'\n') {
        Some(nl) => {
            let line_len = if nl > 0 && buf[nl - 1] == b'\r' {
                nl - 1
            } else {
                nl
            };
            if line_len > max_line_bytes {
                Check::TooLong
            } else {
                Check::Complete {
                    line_len,
                    consumed: nl + 1,
                }
            }
        }
        None if buf.len() > max_line_bytes + 1 => Check::TooLong,
        None => Check::Incomplete,
    }
}

/// One client request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `GET <key>`.
    Get {
        /// The key to read.
        key: Bytes,
    },
    /// `SET <key> <value>`; the value is the rest of the line.
    Set {
        /// The key to write.
        key: Bytes,
        /// Everything after the single space following the key.
        value: Bytes,
    },
    /// `DELETE <key>`.
    Delete {
        /// The key to remove.
        key: Bytes,
    },
    /// `PING`.
    Ping,
}

/// Why a line is not a valid request. The `Display` text follows `ERR `.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Blank line.
    #[error("empty command")]
    Empty,
    /// First token is not a known command.
    #[error("unknown command '{0}'")]
    UnknownCommand(String),
    /// A required argument is missing.
    #[error("wrong number of arguments for '{0}'")]
    WrongArity(&'static str),
    /// A key contains a control character or is not valid UTF-8.
    #[error("invalid key")]
    BadKey,
    /// A value contains a control character other than tab.
    #[error("invalid value")]
    BadValue,
}

/// Parses one line (without its terminator).
pub fn parse(line: &[u8]) -> Result<Request, ParseError> {
    let (cmd, rest) = split_token(line);
    if cmd.is_empty() {
        return Err(ParseError::Empty);
    }
    if cmd.eq_ignore_ascii_case(b"GET") {
        Ok(Request::Get {
            key: single_key(rest, "get")?,
        })
    } else if cmd.eq_ignore_ascii_case(b"SET") {
        parse_set(rest)
    } else if cmd.eq_ignore_ascii_case(b"DELETE") || cmd.eq_ignore_ascii_case(b"DEL") {
        Ok(Request::Delete {
            key: single_key(rest, "delete")?,
        })
    } else if cmd.eq_ignore_ascii_case(b"PING") {
        if rest.iter().all(|b| b.is_ascii_whitespace()) {
            Ok(Request::Ping)
        } else {
            Err(ParseError::WrongArity("ping"))
        }
    } else {
        let shown: String = String::from_utf8_lossy(cmd).chars().take(32).collect();
        Err(ParseError::UnknownCommand(sanitize(&shown)))
    }
}

fn parse_set(rest: &[u8]) -> Result<Request, ParseError> {
    let (key, after_key) = split_token(rest);
    if key.is_empty() || after_key.is_empty() {
        return Err(ParseError::WrongArity("set"));
    }
    // `split_token` stops at the first space; the value starts after exactly one.
    let value = &after_key[1..];
    if value.iter().any(|&b| b.is_ascii_control() && b != b'\t') {
        return Err(ParseError::BadValue);
    }
    Ok(Request::Set {
        key: validate_key(key)?,
        value: Bytes::copy_from_slice(value),
    })
}

fn single_key(rest: &[u8], cmd: &'static str) -> Result<Bytes, ParseError> {
    let (key, tail) = split_token(rest);
    if key.is_empty() || !tail.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(ParseError::WrongArity(cmd));
    }
    validate_key(key)
}

fn validate_key(key: &[u8]) -> Result<Bytes, ParseError> {
    let ok = std::str::from_utf8(key).is_ok() && !key.iter().any(|b| b.is_ascii_control());
    if ok {
        Ok(Bytes::copy_from_slice(key))
    } else {
        Err(ParseError::BadKey)
    }
}

/// Skips leading spaces/tabs, then returns `(token, rest)` where `rest`
/// starts at the separator that ended the token (or is empty).
fn split_token(s: &[u8]) -> (&[u8], &[u8]) {
    let start = s
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(s.len());
    let s = &s[start..];
    let end = s
        .iter()
        .position(|&b| b == b' ' || b == b'\t')
        .unwrap_or(s.len());
    (&s[..end], &s[end..])
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// One reply line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `VALUE <value>`, or `VALUE_B64 <base64>` when the value holds CR or LF.
    Value(Bytes),
    /// `NOT_FOUND`.
    NotFound,
    /// `OK`.
    Ok,
    /// `PONG`.
    Pong,
    /// `ERR <message>`; the message must not contain a newline.
    Err(String),
}

impl Reply {
    /// Appends the reply line, with its `\n`, to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Reply::Value(v) if v.iter().any(|&b| b == b'\n' || b == b'\r') => {
                out.extend_from_slice(b"VALUE_B64 ");
                base64_into(v, out);
            }
            Reply::Value(v) => {
                out.extend_from_slice(b"VALUE ");
                out.extend_from_slice(v);
            }
            Reply::NotFound => out.extend_from_slice(b"NOT_FOUND"),
            Reply::Ok => out.extend_from_slice(b"OK"),
            Reply::Pong => out.extend_from_slice(b"PONG"),
            Reply::Err(msg) => {
                out.extend_from_slice(b"ERR ");
                out.extend(
                    msg.bytes()
                        .map(|b| if b == b'\n' || b == b'\r' { b' ' } else { b }),
                );
            }
        }
        out.push(b'\n');
    }
}

const BASE64_ALPHABET: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 (RFC 4648 §4) with `=` padding, appended to `out`.
pub fn base64_into(data: &[u8], out: &mut Vec<u8>) {
    out.reserve(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(BASE64_ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]);
            } else {
                out.push(b'=');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_test_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            let mut out = Vec::new();
            base64_into(plain.as_bytes(), &mut out);
            assert_eq!(out, encoded.as_bytes(), "{plain:?}");
        }
    }

    #[test]
    fn values_with_cr_or_lf_are_sent_as_one_base64_line() {
        let cases: &[(&[u8], &str)] = &[
            (
                b"a\nOK\nVALUE pwned",
                "VALUE_B64 YQpPSwpWQUxVRSBwd25lZA==\n",
            ),
            (b"x\r", "VALUE_B64 eA0=\n"),
            (b"\r\n", "VALUE_B64 DQo=\n"),
            (b"plain value\twith tab", "VALUE plain value\twith tab\n"),
            (b"\xff\x00bin", "VALUE \u{fffd}\u{0}bin\n"),
        ];
        for (value, want) in cases {
            let mut out = Vec::new();
            Reply::Value(Bytes::copy_from_slice(value)).encode(&mut out);
            assert_eq!(String::from_utf8_lossy(&out), *want, "{value:?}");
            assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
            assert!(!out.contains(&b'\r'));
        }
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn requests_parse_per_spec_table() {
        let cases: Vec<(&str, Result<Request, ParseError>)> = vec![
            ("GET k", Ok(Request::Get { key: b("k") })),
            ("get k", Ok(Request::Get { key: b("k") })),
            (
                "SET k v",
                Ok(Request::Set {
                    key: b("k"),
                    value: b("v"),
                }),
            ),
            (
                "SET k {\"a\": 1, \"b\": [1, 2]}",
                Ok(Request::Set {
                    key: b("k"),
                    value: b("{\"a\": 1, \"b\": [1, 2]}"),
                }),
            ),
            (
                "SET k  two",
                Ok(Request::Set {
                    key: b("k"),
                    value: b(" two"),
                }),
            ),
            (
                "SET k ",
                Ok(Request::Set {
                    key: b("k"),
                    value: b(""),
                }),
            ),
            ("DELETE k", Ok(Request::Delete { key: b("k") })),
            ("delete k", Ok(Request::Delete { key: b("k") })),
            ("PING", Ok(Request::Ping)),
            ("ping", Ok(Request::Ping)),
            ("", Err(ParseError::Empty)),
            ("   ", Err(ParseError::Empty)),
            ("GET", Err(ParseError::WrongArity("get"))),
            ("GET a b", Err(ParseError::WrongArity("get"))),
            ("SET k", Err(ParseError::WrongArity("set"))),
            ("DELETE", Err(ParseError::WrongArity("delete"))),
            ("PING x", Err(ParseError::WrongArity("ping"))),
            ("FLY k", Err(ParseError::UnknownCommand("FLY".into()))),
            ("GET k\x01", Err(ParseError::BadKey)),
            ("SET k v\x00", Err(ParseError::BadValue)),
        ];
        for (line, want) in cases {
            assert_eq!(parse(line.as_bytes()), want, "line {line:?}");
        }
    }

    #[test]
    fn check_finds_lines_and_crlf() {
        assert_eq!(
            check(b"PING\n", 10),
            Check::Complete {
                line_len: 4,
                consumed: 5
            }
        );
        assert_eq!(
            check(b"PING\r\nX", 10),
            Check::Complete {
                line_len: 4,
                consumed: 6
            }
        );
        assert_eq!(check(b"PIN", 10), Check::Incomplete);
        assert_eq!(check(b"", 10), Check::Incomplete);
    }

    #[test]
    fn check_flags_lines_over_the_limit_with_or_without_newline() {
        assert_eq!(
            check(b"0123456789\n", 10),
            Check::Complete {
                line_len: 10,
                consumed: 11
            }
        );
        assert_eq!(
            check(b"0123456789\r\n", 10),
            Check::Complete {
                line_len: 10,
                consumed: 12
            }
        );
        assert_eq!(check(b"01234567890\n", 10), Check::TooLong);
        assert_eq!(check(b"0123456789ab", 10), Check::TooLong);
        assert_eq!(check(b"0123456789a", 10), Check::Incomplete);
    }

    #[test]
    fn replies_encode_one_line_each() {
        let mut out = Vec::new();
        for r in [
            Reply::Value(b("a b")),
            Reply::NotFound,
            Reply::Ok,
            Reply::Pong,
            Reply::Err("x\ny".into()),
        ] {
            r.encode(&mut out);
        }
        assert_eq!(out, b"VALUE a b\nNOT_FOUND\nOK\nPONG\nERR x y\n");
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, rng_seed: proptest::test_runner::RngSeed::Fixed(7), ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_never_panic_and_framing_stays_in_bounds(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut rest = &data[..];
            while let Check::Complete { line_len, consumed } = check(rest, 64) {
                prop_assert!(line_len <= 64 && line_len < consumed && consumed <= rest.len());
                let _ = parse(&rest[..line_len]);
                rest = &rest[consumed..];
            }
            let _ = parse(&data);
        }

        #[test]
        fn set_values_round_trip_byte_for_byte(key in "[a-zA-Z0-9:/_.-]{1,20}", value in "[ -~]{0,80}") {
            let line = format!("SET {key} {value}");
            prop_assert_eq!(
                parse(line.as_bytes()),
                Ok(Request::Set { key: Bytes::from(key.into_bytes()), value: Bytes::from(value.into_bytes()) })
            );
        }
    }
}
