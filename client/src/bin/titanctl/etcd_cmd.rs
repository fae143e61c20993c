//! `watch`, `lease ...` and `txn`: the etcd v3 features, with the parsers
//! for lease ids and for the `txn` compare/operation syntax.

use crate::kv_cmd::text;
use crate::output::{Table, print_json};
use crate::{Exit, Format};
use serde_json::json;
use std::time::Duration;
use titan_client::{
    Client, Compare, CompareField, CompareOp, Error, EventKind, KeyValue, Txn, TxnOp, TxnOpResult,
    TxnResult, WatchQuery,
};

/// `titanctl watch KEY [--prefix] [--rev N] [--count N]`
#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    /// The key (or prefix with --prefix).
    key: String,
    /// Watch every key starting with KEY.
    #[arg(long)]
    prefix: bool,
    /// Start at this revision (replays history from there; 0 = from now).
    #[arg(long, default_value_t = 0)]
    rev: i64,
    /// Exit after this many events (0 = watch until interrupted).
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// Also print each key's previous value.
    #[arg(long)]
    prev_kv: bool,
}

/// `titanctl lease ...`
#[derive(Debug, clap::Subcommand)]
pub enum LeaseAction {
    /// Grant a lease of TTL seconds; prints its id (hex).
    Grant {
        /// Time to live in seconds.
        ttl: i64,
    },
    /// Revoke a lease, deleting every key attached to it.
    Revoke {
        /// The lease id (hex).
        #[arg(value_parser = parse_lease_id)]
        id: i64,
    },
    /// Keep a lease alive: refresh it every third of its TTL until
    /// interrupted (or once with --once). Exit 3 once it is gone.
    KeepAlive {
        /// The lease id (hex).
        #[arg(value_parser = parse_lease_id)]
        id: i64,
        /// Refresh once and exit.
        #[arg(long)]
        once: bool,
    },
    /// Remaining and granted TTL (exit 3 if the lease does not exist).
    Ttl {
        /// The lease id (hex).
        #[arg(value_parser = parse_lease_id)]
        id: i64,
        /// Also list the attached keys.
        #[arg(long)]
        keys: bool,
    },
    /// List every live lease.
    List,
}

/// `titanctl txn --if CMP... --then OP... --else OP...`
#[derive(Debug, clap::Args)]
pub struct TxnArgs {
    /// A compare, `TARGET(KEY) OP OPERAND`: TARGET is value, version,
    /// create, mod or lease; OP is =, !=, > or <. Repeatable; all must hold.
    #[arg(long = "if", value_name = "CMP", value_parser = parse_compare)]
    compares: Vec<Compare>,
    /// An operation run when every compare holds: `put KEY VALUE`,
    /// `get KEY`, `get --prefix P`, `del KEY`, `del --prefix P`. Repeatable.
    #[arg(long = "then", value_name = "OP", value_parser = parse_op)]
    success: Vec<TxnOp>,
    /// An operation run otherwise (same forms as --then). Repeatable.
    #[arg(long = "else", value_name = "OP", value_parser = parse_op)]
    failure: Vec<TxnOp>,
}

/// A lease id as etcdctl prints it: hexadecimal, `0x` optional.
pub fn parse_lease_id(s: &str) -> Result<i64, String> {
    let digits = s.trim().trim_start_matches("0x");
    u64::from_str_radix(digits, 16)
        .map(|id| id as i64)
        .map_err(|e| format!("lease id {s:?} is not hexadecimal: {e}"))
}

fn parse_op_symbol(s: &str) -> Result<(CompareOp, &str), String> {
    let table = [
        ("!=", CompareOp::NotEqual),
        ("=", CompareOp::Equal),
        (">", CompareOp::Greater),
        ("<", CompareOp::Less),
    ];
    table
        .iter()
        .find_map(|(sym, op)| s.strip_prefix(sym).map(|rest| (*op, rest.trim())))
        .ok_or_else(|| format!("expected =, !=, > or < before {s:?}"))
}

/// `TARGET(KEY) OP OPERAND`, e.g. `mod(k) = 5`, `value(k) != "a b"`.
pub fn parse_compare(s: &str) -> Result<Compare, String> {
    let form = "expected TARGET(KEY) OP OPERAND";
    let (target, rest) = s
        .trim()
        .split_once('(')
        .ok_or_else(|| format!("{form}: {s:?}"))?;
    let (key, rest) = rest
        .split_once(')')
        .ok_or_else(|| format!("{form}: {s:?}"))?;
    if key.is_empty() {
        return Err(format!("empty key in {s:?}"));
    }
    let (op, operand) = parse_op_symbol(rest.trim())?;
    let number = || {
        operand
            .parse::<i64>()
            .map_err(|e| format!("{operand:?} is not a number: {e}"))
    };
    let field = match target.trim() {
        "value" => CompareField::Value(unquote(operand).as_bytes().to_vec()),
        "version" => CompareField::Version(number()?),
        "create" => CompareField::Create(number()?),
        "mod" => CompareField::Mod(number()?),
        "lease" => CompareField::Lease(parse_lease_id(operand)?),
        other => {
            return Err(format!(
                "unknown target {other:?}: use value, version, create, mod or lease"
            ));
        }
    };
    Ok(Compare::new(key, op, field))
}

/// The text without one pair of surrounding double quotes.
fn unquote(s: &str) -> &str {
    s.strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .unwrap_or(s)
}

/// `put KEY VALUE` | `get [--prefix] KEY` | `del [--prefix] KEY`.
pub fn parse_op(s: &str) -> Result<TxnOp, String> {
    let (verb, rest) = s.trim().split_once(' ').unwrap_or((s.trim(), ""));
    let rest = rest.trim();
    let (prefix, target) = match rest.strip_prefix("--prefix") {
        Some(after) => (true, after.trim()),
        None => (false, rest),
    };
    let first = |t: &str| t.split_whitespace().next().unwrap_or("").to_string();
    match verb {
        "put" if !prefix => {
            let (key, value) = target
                .split_once(' ')
                .ok_or_else(|| format!("expected `put KEY VALUE`: {s:?}"))?;
            Ok(TxnOp::Put {
                key: key.as_bytes().to_vec(),
                value: unquote(value.trim()).as_bytes().to_vec(),
                lease: 0,
            })
        }
        "get" | "del" if !first(target).is_empty() && target.split_whitespace().count() == 1 => {
            let key = first(target).into_bytes();
            Ok(if verb == "get" {
                TxnOp::Get { key, prefix }
            } else {
                TxnOp::Delete { key, prefix }
            })
        }
        _ => Err(format!(
            "expected `put KEY VALUE`, `get [--prefix] KEY` or `del [--prefix] KEY`: {s:?}"
        )),
    }
}

fn kv_json(kv: &KeyValue) -> serde_json::Value {
    json!({"key": text(&kv.key), "value": text(&kv.value), "version": kv.version,
        "create_revision": kv.create_revision, "lease": format!("{:x}", kv.lease)})
}

pub async fn watch(client: &Client, args: &WatchArgs, fmt: Format) -> Result<Exit, Error> {
    let mut query = if args.prefix {
        WatchQuery::prefix(args.key.as_str())
    } else {
        WatchQuery::key(args.key.as_str())
    }
    .from_revision(args.rev);
    query.prev_kv = args.prev_kv;
    let mut watch = client.watch(query).await?;
    let mut seen = 0u64;
    while args.count == 0 || seen < args.count {
        for event in watch.next().await? {
            let kind = match event.kind {
                EventKind::Put => "PUT",
                EventKind::Delete => "DELETE",
            };
            match fmt {
                Format::Json => println!(
                    "{}",
                    json!({"type": kind, "revision": event.revision(), "kv": kv_json(&event.kv),
                        "prev_kv": event.prev.as_ref().map(kv_json)})
                ),
                Format::Table => println!(
                    "{kind} {} {} (revision {})",
                    text(&event.kv.key),
                    text(&event.kv.value),
                    event.revision()
                ),
            }
            seen += 1;
            if args.count != 0 && seen >= args.count {
                break;
            }
        }
    }
    Ok(Exit::Ok)
}

pub async fn lease(client: &Client, action: &LeaseAction, fmt: Format) -> Result<Exit, Error> {
    match action {
        LeaseAction::Grant { ttl } => {
            let g = client.lease_grant(*ttl).await?;
            match fmt {
                Format::Json => print_json(&json!({"id": format!("{:x}", g.id), "ttl": g.ttl_s})),
                Format::Table => println!("lease {:x} granted with TTL({}s)", g.id, g.ttl_s),
            }
            Ok(Exit::Ok)
        }
        LeaseAction::Revoke { id } => {
            client.lease_revoke(*id).await?;
            match fmt {
                Format::Json => print_json(&json!({"id": format!("{id:x}"), "revoked": true})),
                Format::Table => println!("lease {id:x} revoked"),
            }
            Ok(Exit::Ok)
        }
        LeaseAction::KeepAlive { id, once } => keep_alive(client, *id, *once, fmt).await,
        LeaseAction::Ttl { id, keys } => ttl(client, *id, *keys, fmt).await,
        LeaseAction::List => {
            let ids = client.leases().await?;
            let hex: Vec<String> = ids.iter().map(|id| format!("{id:x}")).collect();
            match fmt {
                Format::Json => print_json(&json!({"leases": hex})),
                Format::Table => {
                    let mut table = Table::new(["LEASE"]);
                    for id in hex {
                        table.row([id]);
                    }
                    table.print();
                }
            }
            Ok(Exit::Ok)
        }
    }
}

async fn keep_alive(client: &Client, id: i64, once: bool, fmt: Format) -> Result<Exit, Error> {
    loop {
        let ttl_s = client.lease_keep_alive_once(id).await?;
        match fmt {
            Format::Json => println!("{}", json!({"id": format!("{id:x}"), "ttl": ttl_s})),
            Format::Table if ttl_s > 0 => println!("lease {id:x} keepalived with TTL({ttl_s})"),
            Format::Table => eprintln!("lease {id:x} expired or revoked"),
        }
        if ttl_s <= 0 {
            return Ok(Exit::NotFound);
        }
        if once {
            return Ok(Exit::Ok);
        }
        let period_ms = (ttl_s as u64).saturating_mul(1000) / 3;
        tokio::time::sleep(Duration::from_millis(period_ms.max(500))).await;
    }
}

async fn ttl(client: &Client, id: i64, keys: bool, fmt: Format) -> Result<Exit, Error> {
    let info = client.lease_time_to_live(id, keys).await?;
    let names: Vec<String> = info.keys.iter().map(|k| text(k)).collect();
    match fmt {
        Format::Json => print_json(&json!({"id": format!("{id:x}"), "found": info.exists(),
            "ttl": info.remaining_s, "granted_ttl": info.granted_ttl_s, "keys": names})),
        Format::Table if !info.exists() => eprintln!("lease {id:x} already expired or revoked"),
        Format::Table => {
            println!(
                "lease {id:x} granted with TTL({}s), remaining({}s)",
                info.granted_ttl_s, info.remaining_s
            );
            for key in names {
                println!("  {key}");
            }
        }
    }
    Ok(if info.exists() {
        Exit::Ok
    } else {
        Exit::NotFound
    })
}

pub async fn txn(client: &Client, args: &TxnArgs, fmt: Format) -> Result<Exit, Error> {
    let txn = Txn {
        compares: args.compares.clone(),
        success: args.success.clone(),
        failure: args.failure.clone(),
    };
    let result = client.txn(&txn).await?;
    print_txn(&result, fmt);
    Ok(if result.succeeded {
        Exit::Ok
    } else {
        Exit::Conflict
    })
}

fn print_txn(result: &TxnResult, fmt: Format) {
    let results: Vec<serde_json::Value> = result
        .results
        .iter()
        .map(|r| match r {
            TxnOpResult::Get(kvs) => json!({"get": kvs.iter().map(kv_json).collect::<Vec<_>>()}),
            TxnOpResult::Put => json!({"put": true}),
            TxnOpResult::Delete { deleted } => json!({"deleted": deleted}),
            TxnOpResult::Nested { succeeded } => json!({"txn": succeeded}),
        })
        .collect();
    if fmt == Format::Json {
        print_json(
            &json!({"succeeded": result.succeeded, "revision": result.revision,
            "results": results}),
        );
        return;
    }
    let branch = if result.succeeded {
        "SUCCESS"
    } else {
        "FAILURE"
    };
    println!("{branch} (revision {})", result.revision);
    for r in &result.results {
        match r {
            TxnOpResult::Get(kvs) => {
                for kv in kvs {
                    println!("{} {}", text(&kv.key), text(&kv.value));
                }
            }
            TxnOpResult::Put => println!("OK"),
            TxnOpResult::Delete { deleted } => println!("{deleted}"),
            TxnOpResult::Nested { succeeded } => println!("txn {succeeded}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_parse_from_a_table() {
        let cases: &[(&str, Compare)] = &[
            (
                "mod(k) = 5",
                Compare::new("k", CompareOp::Equal, CompareField::Mod(5)),
            ),
            (
                "version(a/b)>0",
                Compare::new("a/b", CompareOp::Greater, CompareField::Version(0)),
            ),
            (
                "create(k) < 3",
                Compare::new("k", CompareOp::Less, CompareField::Create(3)),
            ),
            (
                r#"value(k) != "a b""#,
                Compare::new(
                    "k",
                    CompareOp::NotEqual,
                    CompareField::Value(b"a b".to_vec()),
                ),
            ),
            (
                "value(k) = plain",
                Compare::new(
                    "k",
                    CompareOp::Equal,
                    CompareField::Value(b"plain".to_vec()),
                ),
            ),
            (
                "lease(k) = 0x1f",
                Compare::new("k", CompareOp::Equal, CompareField::Lease(31)),
            ),
        ];
        for (text, want) in cases {
            assert_eq!(parse_compare(text).as_ref(), Ok(want), "{text}");
        }
    }

    #[test]
    fn malformed_compares_are_refused_with_a_reason() {
        for bad in [
            "mod k = 5",
            "mod(k = 5",
            "mod() = 5",
            "size(k) = 5",
            "mod(k) ~ 5",
            "mod(k) = five",
            "lease(k) = zz",
        ] {
            assert!(parse_compare(bad).is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn txn_ops_parse_from_a_table() {
        let cases: &[(&str, TxnOp)] = &[
            (
                "put k hello world",
                TxnOp::Put {
                    key: b"k".to_vec(),
                    value: b"hello world".to_vec(),
                    lease: 0,
                },
            ),
            (
                "get k",
                TxnOp::Get {
                    key: b"k".to_vec(),
                    prefix: false,
                },
            ),
            (
                "get --prefix p/",
                TxnOp::Get {
                    key: b"p/".to_vec(),
                    prefix: true,
                },
            ),
            (
                "del k",
                TxnOp::Delete {
                    key: b"k".to_vec(),
                    prefix: false,
                },
            ),
            (
                "del --prefix p/",
                TxnOp::Delete {
                    key: b"p/".to_vec(),
                    prefix: true,
                },
            ),
        ];
        for (text, want) in cases {
            assert_eq!(parse_op(text).as_ref(), Ok(want), "{text}");
        }
        for bad in ["put k", "get", "del a b", "put --prefix p v", "drop k", ""] {
            assert!(parse_op(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn lease_ids_are_hexadecimal_as_etcdctl_prints_them() {
        assert_eq!(parse_lease_id("694d77aa9e5b3a02"), Ok(0x694d77aa9e5b3a02));
        assert_eq!(parse_lease_id("0x10"), Ok(16));
        assert!(parse_lease_id("xyz").is_err());
        assert!(parse_lease_id("").is_err());
    }
}
