//! The `hookwire` command line. Parsing only: each subcommand is a function
//! in `hookwire::commands`.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use hookwire::{
    app::Role,
    client::{self, Api, Selectors, Target},
    commands, telemetry,
};

/// mimalloc instead of glibc malloc: the ingress hot path allocates per
/// request, and glibc's malloc/free showed up as ~10% of its CPU profile
/// (see docs/BENCHMARKS.md). The `system-alloc` feature keeps glibc's, for
/// heap profilers that see only `malloc` (heaptrack, massif).
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "hookwire",
    version,
    about = "Webhook broker: signed webhooks in, RabbitMQ in the middle, reliable delivery out."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the ingress and/or the delivery workers until SIGTERM/SIGINT.
    Serve {
        /// Configuration file (TOML).
        #[arg(short, long, default_value = "config/hookwire.toml")]
        config: PathBuf,
        /// Which side to run; run each on its own to scale them separately.
        #[arg(long, value_enum, default_value_t = Role::All)]
        role: Role,
        /// Log format (level from RUST_LOG, default info).
        #[arg(long, value_enum, default_value_t = telemetry::LogFormat::Pretty, env = "HOOKWIRE_LOG_FORMAT")]
        log_format: telemetry::LogFormat,
    },
    /// Validate a config and print the RabbitMQ topology it declares (no broker needed).
    Check {
        #[arg(short, long, default_value = "config/hookwire.toml")]
        config: PathBuf,
    },
    /// Print the headers (or a curl command) of a validly signed request for a source.
    Sign {
        #[arg(short, long, default_value = "config/hookwire.toml")]
        config: PathBuf,
        /// Source name, as in [sources.NAME].
        #[arg(long)]
        source: String,
        /// File holding the request body to sign.
        #[arg(long)]
        body: PathBuf,
        /// Print a ready-to-run curl command instead of the headers.
        #[arg(long)]
        curl: bool,
        /// Event id to sign with, where the scheme carries one (default: a fresh msg_ id).
        #[arg(long)]
        id: Option<String>,
        /// Extra header for the curl command, e.g. -H 'X-GitHub-Event: push' (repeatable).
        #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
        headers: Vec<String>,
    },
    /// Subscriptions: list (default), get, create, edit, delete, apply -f FILE (operator API).
    Subscriptions {
        #[command(subcommand)]
        action: Option<client::SubscriptionsAction>,
        #[command(flatten)]
        api: Api,
    },
    /// The audit log, newest first: who changed what, when, how it ended (operator API).
    Audit {
        /// Only records about this subscription (or `unrouted`, `config`).
        #[arg(long)]
        target: Option<String>,
        /// How many (default 50, at most 1000).
        #[arg(long)]
        limit: Option<usize>,
        /// Older than this record id (the previous page's last).
        #[arg(long)]
        after: Option<u64>,
        #[command(flatten)]
        api: Api,
    },
    /// The event log: `events show ID` tells what happened to an event, `list` searches, `resend` sends one again (operator API).
    Events {
        #[command(subcommand)]
        action: client::EventsAction,
        #[command(flatten)]
        api: Api,
    },
    /// A subscription's dead letters: list, show, replay, purge (operator API).
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
        #[command(flatten)]
        api: Api,
    },
    /// Events no subscription matched: list, show, replay through routing, purge.
    Unrouted {
        #[command(subcommand)]
        action: QueueAction,
        #[command(flatten)]
        api: Api,
    },
    /// Re-deliver archived events from a time window to a subscription (original ids kept).
    Replay {
        /// Subscription name, as in [subscriptions.NAME].
        subscription: String,
        /// Window start, RFC 3339 (2026-11-21T09:00:00Z), inclusive.
        #[arg(long)]
        from: String,
        /// Window end, RFC 3339, exclusive (default: now).
        #[arg(long)]
        to: Option<String>,
        /// Only event types matching this topic pattern (within the subscription's topics).
        #[arg(long = "type", value_name = "PATTERN")]
        event_type: Option<String>,
        /// Only count what would be replayed.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        api: Api,
    },
    /// Stop deliveries of a subscription in every process (events keep queueing).
    Pause {
        /// Subscription name, as in [subscriptions.NAME].
        subscription: String,
        #[command(flatten)]
        api: Api,
    },
    /// Restart deliveries of a paused subscription.
    Resume {
        /// Subscription name, as in [subscriptions.NAME].
        subscription: String,
        #[command(flatten)]
        api: Api,
    },
    /// Run a debug destination that prints every webhook it receives.
    Sink {
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: std::net::SocketAddr,
    },
}

#[derive(Subcommand)]
enum DlqAction {
    /// List dead letters, oldest first (browsing changes nothing).
    List {
        /// Subscription name, as in [subscriptions.NAME].
        subscription: String,
        /// Page size (at most 1000).
        #[arg(long)]
        limit: Option<usize>,
        /// Start after this event id (the previous page's last).
        #[arg(long)]
        after: Option<String>,
    },
    /// Show one dead letter whole: headers, attempt history, body.
    Show {
        /// Subscription name, as in [subscriptions.NAME].
        subscription: String,
        /// The event id (webhook-id).
        event_id: String,
    },
    /// Move matching dead letters back to the work queue with a fresh attempt count.
    Replay {
        /// Subscription name, as in [subscriptions.NAME].
        subscription: String,
        #[command(flatten)]
        selectors: Selectors,
    },
    /// Delete matching dead letters for good.
    Purge {
        /// Subscription name, as in [subscriptions.NAME].
        subscription: String,
        #[command(flatten)]
        selectors: Selectors,
        /// Confirm the deletion (not needed with --dry-run).
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand)]
enum QueueAction {
    /// List unrouted events, oldest first (browsing changes nothing).
    List {
        /// Page size (at most 1000).
        #[arg(long)]
        limit: Option<usize>,
        /// Start after this event id (the previous page's last).
        #[arg(long)]
        after: Option<String>,
    },
    /// Show one unrouted event whole.
    Show {
        /// The event id (webhook-id).
        event_id: String,
    },
    /// Route matching events again (those still matching no subscription stay).
    Replay {
        #[command(flatten)]
        selectors: Selectors,
    },
    /// Delete matching unrouted events for good.
    Purge {
        #[command(flatten)]
        selectors: Selectors,
        /// Confirm the deletion (not needed with --dry-run).
        #[arg(long)]
        yes: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, role, log_format } => commands::serve(&config, role, log_format),
        Command::Check { config } => commands::check(&config),
        Command::Sign { config, source, body, curl, id, headers } => {
            commands::sign(&config, &source, &body, curl, id, &headers)
        }
        Command::Sink { listen } => commands::sink(listen),
        Command::Subscriptions { action, api } => {
            client::subscriptions_action(&api, action.unwrap_or(client::SubscriptionsAction::List))
        }
        Command::Events { action, api } => client::events_action(&api, &action),
        Command::Audit { target, limit, after, api } => client::audit(&api, target.as_deref(), limit, after),
        Command::Dlq { action, api } => match action {
            DlqAction::List { subscription, limit, after } => {
                client::list(&api, &Target::DeadLetters(subscription), limit, after.as_deref())
            }
            DlqAction::Show { subscription, event_id } => {
                client::show(&api, &Target::DeadLetters(subscription), &event_id)
            }
            DlqAction::Replay { subscription, selectors } => {
                client::replay(&api, &Target::DeadLetters(subscription), &selectors)
            }
            DlqAction::Purge { subscription, selectors, yes } => {
                client::purge(&api, &Target::DeadLetters(subscription), &selectors, yes)
            }
        },
        Command::Unrouted { action, api } => match action {
            QueueAction::List { limit, after } => client::list(&api, &Target::Unrouted, limit, after.as_deref()),
            QueueAction::Show { event_id } => client::show(&api, &Target::Unrouted, &event_id),
            QueueAction::Replay { selectors } => client::replay(&api, &Target::Unrouted, &selectors),
            QueueAction::Purge { selectors, yes } => client::purge(&api, &Target::Unrouted, &selectors, yes),
        },
        Command::Replay { subscription, from, to, event_type, dry_run, api } => {
            client::replay_window(&api, &subscription, &from, to.as_deref(), event_type.as_deref(), dry_run)
        }
        Command::Pause { subscription, api } => client::set_paused(&api, &subscription, true),
        Command::Resume { subscription, api } => client::set_paused(&api, &subscription, false),
    }
}
