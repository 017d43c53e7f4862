//! `hookwire subscriptions get|create|edit|delete|apply`: the subscription
//! routes of the operator API from a terminal or a CI job.
//!
//! `apply -f FILE` is declarative, like `kubectl apply`: it reads the
//! subscriptions a team wants (TOML `[subscriptions.NAME]` tables, or JSON
//! `{"NAME": {...}}`), compares them with the API-managed ones, prints the
//! plan (create, update, unchanged, delete with `--prune`), then carries it
//! out unless `--dry-run`. It never touches the config file's subscriptions.

use std::{collections::BTreeMap, path::PathBuf, process::ExitCode};

use reqwest::Method;
use serde_json::Value;

use super::{Api, Client, parse, run, table, urlencode};
use crate::config::SubscriptionConfig;

#[derive(clap::Subcommand)]
pub enum SubscriptionsAction {
    /// Subscriptions with queue depths, consumers, circuit, paused (the default).
    List,
    /// One subscription: definition (secrets masked), version, owner, status.
    Get { name: String },
    /// Create the subscriptions of a TOML or JSON file.
    Create {
        /// `[subscriptions.NAME]` tables (TOML) or `{"NAME": {...}}` (JSON).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// Change a subscription: each --set is a JSON merge patch member (KEY=JSON value).
    Edit {
        name: String,
        /// e.g. --set url='"https://new/hooks"' --set retry='["1s","10s"]' --set description=null
        #[arg(long = "set", value_name = "KEY=JSON", required = true)]
        set: Vec<String>,
    },
    /// Delete a subscription (refused while it holds events, unless --drain or --discard).
    Delete {
        name: String,
        /// Stop routing, deliver what is queued, then delete.
        #[arg(long, conflicts_with = "discard")]
        drain: bool,
        /// Delete now, losing queued events.
        #[arg(long)]
        discard: bool,
    },
    /// Make the API-managed subscriptions match a file: print the plan, then do it.
    Apply {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Print the plan only.
        #[arg(long)]
        dry_run: bool,
        /// Also delete API-managed subscriptions the file does not have.
        #[arg(long)]
        prune: bool,
    },
}

pub fn subscriptions_action(api: &Api, action: SubscriptionsAction) -> ExitCode {
    match action {
        SubscriptionsAction::List => super::subscriptions(api),
        SubscriptionsAction::Get { name } => run(|| {
            let body = Client::new(api)?.send(Method::GET, &path(&name), None)?;
            if api.json {
                return Ok(body + "\n");
            }
            let value: Value = parse(&body)?;
            Ok(describe(&value))
        }),
        SubscriptionsAction::Create { file } => run(|| {
            let client = Client::new(api)?;
            let mut out = String::new();
            for (name, definition) in read_file(&file)? {
                let mut body = definition;
                body["name"] = Value::String(name.clone());
                let answer: Value = parse(&client.send(Method::POST, "/api/v1/subscriptions", Some(body))?)?;
                out += &format!("created {name} (version {})\n", answer["version"]);
            }
            Ok(out)
        }),
        SubscriptionsAction::Edit { name, set } => run(|| {
            let client = Client::new(api)?;
            let mut patch = serde_json::Map::new();
            for item in &set {
                let (key, json) = item.split_once('=').ok_or_else(|| format!("--set {item:?}: expected KEY=JSON"))?;
                let value: Value = serde_json::from_str(json)
                    .map_err(|e| format!("--set {key}: not JSON ({e}); quote strings: '\"x\"'"))?;
                patch.insert(key.to_owned(), value);
            }
            let current: Value = parse(&client.send(Method::GET, &path(&name), None)?)?;
            let version = current["version"].as_u64().ok_or("the answer has no version")?;
            let answer: Value = parse(&client.send_if_match(
                Method::PATCH,
                &path(&name),
                Some(Value::Object(patch)),
                Some(version),
            )?)?;
            Ok(format!("updated {name} (version {} -> {})\n", version, answer["version"]))
        }),
        SubscriptionsAction::Delete { name, drain, discard } => run(|| {
            let query = if drain {
                "?drain=true"
            } else if discard {
                "?discard=true"
            } else {
                ""
            };
            Client::new(api)?.send(Method::DELETE, &format!("{}{query}", path(&name)), None)?;
            Ok(if drain {
                format!("draining {name}: deleted once its queues are empty\n")
            } else {
                format!("deleted {name}\n")
            })
        }),
        SubscriptionsAction::Apply { file, dry_run, prune } => run(|| apply(api, &file, dry_run, prune)),
    }
}

fn path(name: &str) -> String {
    format!("/api/v1/subscriptions/{}", urlencode(name))
}

fn describe(value: &Value) -> String {
    let mut rows = vec![vec!["FIELD".to_owned(), "VALUE".to_owned()]];
    for key in ["name", "version", "managed_by", "draining"] {
        rows.push(vec![key.to_owned(), plain(&value[key])]);
    }
    if let Some(definition) = value["definition"].as_object() {
        for (key, field) in definition.iter().filter(|(_, v)| !v.is_null()) {
            rows.push(vec![key.clone(), plain(field)]);
        }
    }
    table(&rows)
}

fn plain(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The subscriptions of a TOML (`[subscriptions.NAME]`) or JSON
/// (`{"NAME": {...}}`) file, by name.
fn read_file(file: &PathBuf) -> Result<BTreeMap<String, Value>, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let value: Value = if file.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?
    } else {
        let table: toml::Table = text.parse().map_err(|e| format!("{}: {e}", file.display()))?;
        serde_json::to_value(table).map_err(|e| format!("{}: {e}", file.display()))?
    };
    let subscriptions = value.get("subscriptions").cloned().unwrap_or(value);
    let Value::Object(map) = subscriptions else {
        return Err(format!("{}: expected [subscriptions.NAME] tables or a JSON object of them", file.display()));
    };
    Ok(map.into_iter().collect())
}

/// A definition with the server's defaults filled in, as the API shows it:
/// what `apply` compares.
fn normalized(name: &str, definition: &Value) -> Result<Value, String> {
    let config: SubscriptionConfig =
        serde_json::from_value(definition.clone()).map_err(|e| format!("subscriptions.{name}: {e}"))?;
    Ok(serde_json::to_value(config).expect("definitions serialize"))
}

enum Step {
    Create(String, Value),
    Update(String, Value, u64),
    Unchanged(String),
    Delete(String),
    Keep(String),
}

fn apply(api: &Api, file: &PathBuf, dry_run: bool, prune: bool) -> Result<String, String> {
    let client = Client::new(api)?;
    let wanted = read_file(file)?;
    let listed: Vec<Value> = parse(&client.send(Method::GET, "/api/v1/subscriptions", None)?)?;
    let managed_by: BTreeMap<String, String> = listed
        .iter()
        .filter_map(|s| Some((s["name"].as_str()?.to_owned(), s["managed_by"].as_str().unwrap_or("").to_owned())))
        .collect();
    let mut plan = Vec::new();
    for (name, definition) in &wanted {
        match managed_by.get(name).map(String::as_str) {
            None => plan.push(Step::Create(name.clone(), definition.clone())),
            Some("file") => {
                return Err(format!(
                    "{name}: defined in the server's config file; apply manages API subscriptions only"
                ));
            }
            Some(_) => {
                let current: Value = parse(&client.send(Method::GET, &path(name), None)?)?;
                let version = current["version"].as_u64().unwrap_or(0);
                if normalized(name, definition)? == current["definition"] {
                    plan.push(Step::Unchanged(name.clone()));
                } else {
                    plan.push(Step::Update(name.clone(), definition.clone(), version));
                }
            }
        }
    }
    for (name, owner) in &managed_by {
        if owner == "api" && !wanted.contains_key(name) {
            plan.push(if prune { Step::Delete(name.clone()) } else { Step::Keep(name.clone()) });
        }
    }
    let mut rows = vec![vec!["ACTION".to_owned(), "SUBSCRIPTION".to_owned(), "RESULT".to_owned()]];
    let mut failed = false;
    for step in &plan {
        let (action, name) = match step {
            Step::Create(name, _) => ("create", name),
            Step::Update(name, _, _) => ("update", name),
            Step::Unchanged(name) => ("unchanged", name),
            Step::Delete(name) => ("delete", name),
            Step::Keep(name) => ("keep (not in the file; --prune deletes)", name),
        };
        let result = if dry_run {
            Ok("dry run".to_owned())
        } else {
            match step {
                Step::Create(name, definition) => {
                    let mut body = definition.clone();
                    body["name"] = Value::String(name.clone());
                    client.send(Method::POST, "/api/v1/subscriptions", Some(body)).map(|_| "done".to_owned())
                }
                Step::Update(name, definition, version) => client
                    .send_if_match(Method::PUT, &path(name), Some(definition.clone()), Some(*version))
                    .map(|_| "done".to_owned()),
                Step::Delete(name) => client.send(Method::DELETE, &path(name), None).map(|_| "done".to_owned()),
                Step::Unchanged(_) | Step::Keep(_) => Ok(String::new()),
            }
        };
        let result = result.unwrap_or_else(|e| {
            failed = true;
            format!("failed: {e}")
        });
        rows.push(vec![action.to_owned(), name.clone(), result]);
    }
    let out = table(&rows);
    if failed { Err(format!("some steps failed:\n{out}")) } else { Ok(out) }
}
