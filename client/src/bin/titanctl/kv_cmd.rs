//! `get`, `set`, `del`, `range`.

use crate::output::{Table, print_json};
use crate::{Exit, Format};
use serde_json::json;
use titan_client::{CasResult, Client, Consistency, Error, RangePage, RangeQuery};

/// `titanctl get KEY`
#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// The key.
    key: String,
    /// Serve from the contacted node without confirming with the leader.
    #[arg(long)]
    serializable: bool,
    /// Treat KEY as a prefix and list every matching key (like `range --prefix`).
    #[arg(long)]
    prefix: bool,
    /// Read as of this store revision (0 = the newest).
    #[arg(long, default_value_t = 0)]
    rev: i64,
}

/// `titanctl set KEY VALUE` (alias `put`)
#[derive(Debug, clap::Args)]
pub struct SetArgs {
    /// The key.
    key: String,
    /// The value (quote it if it has spaces).
    value: String,
    /// Only write if the key's current version is this one.
    #[arg(long, conflicts_with = "if_absent")]
    if_version: Option<u64>,
    /// Only write if the key does not exist.
    #[arg(long)]
    if_absent: bool,
    /// Attach the key to this lease (hex id, as `lease grant` prints it);
    /// the key vanishes when the lease is revoked or expires.
    #[arg(long, value_parser = crate::etcd_cmd::parse_lease_id, conflicts_with_all = ["if_version", "if_absent"])]
    lease: Option<i64>,
}

/// `titanctl del KEY`
#[derive(Debug, clap::Args)]
pub struct DelArgs {
    /// The key.
    key: String,
    /// Only delete if the key's current version is this one.
    #[arg(long)]
    if_version: Option<u64>,
}

/// `titanctl range [START [END]] [--prefix P]`
#[derive(Debug, clap::Args)]
pub struct RangeArgs {
    /// Inclusive start key (default: the beginning).
    start: Option<String>,
    /// Exclusive end key (default: the end).
    end: Option<String>,
    /// List keys with this prefix instead of a range.
    #[arg(long, conflicts_with_all = ["start", "end"])]
    prefix: Option<String>,
    /// Maximum keys to list (0 = server default).
    #[arg(long, default_value_t = 0)]
    limit: u32,
    /// Serve from the contacted node without confirming with the leader.
    #[arg(long)]
    serializable: bool,
    /// Read as of this store revision (0 = the newest).
    #[arg(long, default_value_t = 0)]
    rev: i64,
}

fn consistency(serializable: bool) -> Consistency {
    if serializable {
        Consistency::Serializable
    } else {
        Consistency::Linearizable
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub async fn get(client: &Client, args: &GetArgs, fmt: Format) -> Result<Exit, Error> {
    if args.prefix {
        let query = RangeQuery::prefix(args.key.as_str())
            .with_consistency(consistency(args.serializable))
            .at_revision(args.rev);
        return print_page(client.range(query).await?, fmt);
    }
    // [KEY, KEY + "\0") holds exactly KEY.
    let mut end = args.key.clone().into_bytes();
    end.push(0);
    let query = RangeQuery::between(args.key.as_str(), end)
        .with_consistency(consistency(args.serializable))
        .at_revision(args.rev);
    let found = client
        .range(query)
        .await?
        .kvs
        .into_iter()
        .find(|kv| kv.key == args.key.as_bytes())
        .map(|kv| (kv.value, kv.version));
    match (found, fmt) {
        (Some((value, version)), Format::Json) => {
            print_json(&json!({"key": args.key, "value": text(&value), "version": version}));
            Ok(Exit::Ok)
        }
        (Some((value, _)), Format::Table) => {
            println!("{}", text(&value));
            Ok(Exit::Ok)
        }
        (None, Format::Json) => {
            print_json(&json!({"key": args.key, "found": false}));
            Ok(Exit::NotFound)
        }
        (None, Format::Table) => {
            eprintln!("key {:?} not found", args.key);
            Ok(Exit::NotFound)
        }
    }
}

pub async fn set(client: &Client, args: &SetArgs, fmt: Format) -> Result<Exit, Error> {
    let (key, value) = (args.key.as_str(), args.value.as_str());
    let result = match (args.if_version, args.if_absent) {
        (Some(v), _) => client.put_if_version(key, value, v).await?,
        (None, true) => client.put_if_absent(key, value).await?,
        (None, false) => CasResult::Applied {
            version: client
                .put_with_lease(key, value, args.lease.unwrap_or(0))
                .await?,
        },
    };
    Ok(report_cas(&args.key, result, fmt))
}

pub async fn del(client: &Client, args: &DelArgs, fmt: Format) -> Result<Exit, Error> {
    if let Some(expected) = args.if_version {
        let result = client
            .delete_if_version(args.key.as_str(), expected)
            .await?;
        return Ok(report_cas(&args.key, result, fmt));
    }
    let deleted = client.delete(args.key.as_str()).await?;
    match fmt {
        Format::Json => print_json(&json!({
            "key": args.key, "existed": deleted.existed, "version": deleted.version
        })),
        Format::Table if deleted.existed => println!("deleted (version {})", deleted.version),
        Format::Table => println!("not present (version {})", deleted.version),
    }
    Ok(Exit::Ok)
}

fn report_cas(key: &str, result: CasResult, fmt: Format) -> Exit {
    match (result, fmt) {
        (CasResult::Applied { version }, Format::Json) => {
            print_json(&json!({"key": key, "succeeded": true, "version": version}));
            Exit::Ok
        }
        (CasResult::Applied { version }, Format::Table) => {
            println!("OK (version {version})");
            Exit::Ok
        }
        (CasResult::Conflict { current_version }, Format::Json) => {
            print_json(
                &json!({"key": key, "succeeded": false, "current_version": current_version}),
            );
            Exit::Conflict
        }
        (CasResult::Conflict { current_version }, Format::Table) => {
            eprintln!("condition failed: {key:?} is at version {current_version} (0 = absent)");
            Exit::Conflict
        }
    }
}

pub async fn range(client: &Client, args: &RangeArgs, fmt: Format) -> Result<Exit, Error> {
    let query = match &args.prefix {
        Some(prefix) => RangeQuery::prefix(prefix.as_str()),
        None => RangeQuery::between(
            args.start.clone().unwrap_or_default(),
            args.end.clone().unwrap_or_default(),
        ),
    };
    let query = query
        .with_limit(args.limit)
        .with_consistency(consistency(args.serializable))
        .at_revision(args.rev);
    print_page(client.range(query).await?, fmt)
}

/// Prints a page of keys as a table or as JSON.
fn print_page(page: RangePage, fmt: Format) -> Result<Exit, Error> {
    if fmt == Format::Json {
        let kvs: Vec<_> = page
            .kvs
            .iter()
            .map(|kv| {
                json!({"key": text(&kv.key), "value": text(&kv.value), "version": kv.version,
                    "create_revision": kv.create_revision, "lease": kv.lease})
            })
            .collect();
        print_json(&json!({"kvs": kvs, "more": page.more, "revision": page.revision}));
        return Ok(Exit::Ok);
    }
    let mut table = Table::new(["KEY", "VERSION", "VALUE"]);
    for kv in &page.kvs {
        table.row([text(&kv.key), kv.version.to_string(), text(&kv.value)]);
    }
    table.print();
    if page.more {
        eprintln!("(more keys match; raise --limit or continue from the last key)");
    }
    Ok(Exit::Ok)
}
