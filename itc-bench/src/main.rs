//! `itc-bench`: ITC's benchmark tool. It starts the servers in child processes (or drives
//! an ITC server given with `--addr`), loads them over real loopback gRPC connections, and
//! measures in the same run a raw tonic baseline — the same messages through one tokio
//! broadcast fan-out, an echo, a ping stream, and nothing of ITC's logic. Every ITC figure
//! is printed with its ratio to the baseline: on a shared, noisy machine the ratio is the
//! figure. Each scenario repeats (3 times by default); the median is reported with the
//! min and max.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use tokio::io::AsyncReadExt;
use tonic::Status;

mod baseline;
mod drive;
mod fanout;
mod report;
mod server;
mod streams;
mod unary;

use report::{Report, Target, Unit};
use server::{Kind, Server};

/// Why a scenario could not be measured.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BenchError {
    /// A server could not be started or read.
    #[error("server: {0}")]
    Server(String),
    /// No connection.
    #[error("cannot connect to {url}: {message}")]
    Connect {
        /// Where.
        url: String,
        /// Why.
        message: String,
    },
    /// A call failed.
    #[error("a call failed: {}: {}", .0.code(), .0.message())]
    Call(Box<Status>),
    /// The scenario went wrong otherwise.
    #[error("{0}")]
    Failed(String),
}

impl From<Status> for BenchError {
    fn from(status: Status) -> Self {
        Self::Call(Box::new(status))
    }
}

const EXAMPLES: &str = "\
Examples:
  cargo run --release -p itc-bench                      # every scenario, 3 repeats
  cargo run --release -p itc-bench -- fanout latency    # some scenarios
  cargo run --release -p itc-bench -- --repeat 5 --json > bench.jsonl
  cargo run --release -p itc-bench -- --addr http://127.0.0.1:50051 --server-pid 1234 unary
  cargo run -p itc-bench -- --quick --repeat 1          # a smoke run with tiny sizes";

/// ITC's benchmark tool: ITC against a raw tonic baseline measured in the same run.
#[derive(Debug, Parser)]
#[command(name = "itc-bench", version, about, long_about, after_help = EXAMPLES, args_conflicts_with_subcommands = true)]
struct Args {
    /// Scenarios to run [default: all].
    #[arg(value_enum)]
    scenarios: Vec<Scenario>,

    /// Times each scenario runs; the median is reported with min and max.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    repeat: u32,

    /// Tiny sizes and short durations: checks that every scenario works, measures nothing.
    #[arg(long)]
    quick: bool,

    /// Print only JSON lines (no table).
    #[arg(long)]
    json: bool,

    /// Exit 1 when a target is missed (not only when a scenario fails).
    #[arg(long)]
    check: bool,

    /// Only these fan-out sizes (subscriber counts of the plan, e.g. `1,1000`).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    subscribers: Vec<usize>,

    /// Drive this ITC server instead of starting one (the baseline still runs here).
    #[arg(long, value_name = "URL")]
    addr: Option<String>,

    /// The process id of the `--addr` server, for its memory and CPU figures.
    #[arg(long, value_name = "PID", requires = "addr")]
    server_pid: Option<u32>,

    /// The durable variant's store: log or sqlite [default: the server's, log].
    #[arg(long, value_name = "KIND")]
    store: Option<itc_server::store::StoreKind>,

    /// The durable variant's sync level: full, normal or off [default: the server's,
    /// normal].
    #[arg(long, value_name = "LEVEL")]
    sync: Option<itc_server::store::SyncLevel>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs a server for the benchmark (started by the benchmark itself).
    #[command(hide = true)]
    Serve {
        /// Which.
        #[arg(value_enum)]
        what: ServeWhat,
        /// ITC's data directory.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// ITC with the in-memory store.
        #[arg(long)]
        in_memory: bool,
        /// ITC's durable store.
        #[arg(long)]
        store: Option<itc_server::store::StoreKind>,
        /// ITC's sync level.
        #[arg(long)]
        sync: Option<itc_server::store::SyncLevel>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ServeWhat {
    Baseline,
    Itc,
}

/// The scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// One publisher, 1, 100 and 1,000 subscribers of its task: delivered events/s.
    Fanout,
    /// Publish-to-receive latency at 10,000 deliveries/s with 100 and 1,000 subscribers.
    Latency,
    /// 10,000 subscribers, each of its own task; events spread over the tasks.
    Filtered,
    /// Server memory holding 10,000 open, idle subscriptions.
    Idle,
    /// GetStatus (a page of 100 over 10,000 tasks) and Coordinate with 64 calls in
    /// flight; progress reports from 100 agents.
    Unary,
    /// 1,000 sessions heartbeating once a second: server CPU.
    Heartbeats,
}

/// The sizes of a run.
struct Plan {
    fanout: Vec<(usize, u64)>,
    window: usize,
    latency_subscribers: Vec<usize>,
    latency_rate: f64,
    latency_duration: Duration,
    filtered: (usize, u64),
    idle: usize,
    settle: Duration,
    status_tasks: usize,
    coordinate_tasks: usize,
    agents: usize,
    unary: unary::Bounds,
    heartbeat_sessions: usize,
    heartbeat_period: Duration,
    heartbeat_measure: Duration,
}

impl Plan {
    fn full() -> Self {
        Self {
            fanout: vec![(1, 40_000), (100, 20_000), (1_000, 2_000)],
            window: 64,
            latency_subscribers: vec![100, 1_000],
            latency_rate: 10_000.0,
            latency_duration: Duration::from_secs(3),
            filtered: (10_000, 3),
            idle: 10_000,
            settle: Duration::from_secs(2),
            status_tasks: 10_000,
            coordinate_tasks: 10_000,
            agents: 100,
            unary: unary::Bounds {
                in_flight: 64,
                duration: Duration::from_secs(3),
                max_calls: 2_000_000,
            },
            heartbeat_sessions: 1_000,
            heartbeat_period: Duration::from_secs(1),
            heartbeat_measure: Duration::from_secs(10),
        }
    }

    fn quick() -> Self {
        Self {
            fanout: vec![(1, 300), (10, 100)],
            window: 8,
            latency_subscribers: vec![10],
            latency_rate: 1_000.0,
            latency_duration: Duration::from_millis(300),
            filtered: (50, 2),
            idle: 50,
            settle: Duration::from_millis(100),
            status_tasks: 150,
            coordinate_tasks: 16,
            agents: 8,
            unary: unary::Bounds {
                in_flight: 8,
                duration: Duration::from_millis(300),
                max_calls: 2_000,
            },
            heartbeat_sessions: 20,
            heartbeat_period: Duration::from_millis(200),
            heartbeat_measure: Duration::from_millis(600),
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("itc-bench: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match args.command {
        Some(Command::Serve {
            what,
            data_dir,
            in_memory,
            store,
            sync,
        }) => runtime.block_on(serve(what, data_dir, in_memory, store, sync)),
        None => runtime.block_on(bench(args)),
    }
}

/// The child-process side: serve until stdin closes.
async fn serve(
    what: ServeWhat,
    data_dir: Option<PathBuf>,
    in_memory: bool,
    store: Option<itc_server::store::StoreKind>,
    sync: Option<itc_server::store::SyncLevel>,
) -> ExitCode {
    // As the itc-server binary logs by default (its spans are part of the cost).
    let filter = tracing_subscriber::EnvFilter::try_from_env("ITC_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
    let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("itc-bench serve: cannot listen: {e}");
            return ExitCode::from(2);
        }
    };
    match listener.local_addr() {
        Ok(addr) => println!("listening on {addr}"),
        Err(e) => {
            eprintln!("itc-bench serve: {e}");
            return ExitCode::from(2);
        }
    }
    let shutdown = async {
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 64];
        while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
    };
    let result = match what {
        ServeWhat::Baseline => {
            let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            tonic::transport::Server::builder()
                .add_service(baseline::BaselineService::new().into_server())
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
                .map_err(|e| e.to_string())
        }
        ServeWhat::Itc => {
            let mut settings = itc_server::config::Settings {
                in_memory,
                // Room for the heartbeat scenario's agents and the benchmark's own.
                max_concurrent_agents: 4_000,
                shutdown_grace: Duration::from_secs(2),
                ..Default::default()
            };
            if let Some(dir) = data_dir {
                settings.data_dir = dir;
            }
            settings.store = store.unwrap_or(settings.store);
            settings.sync = sync.unwrap_or(settings.sync);
            itc_server::serve(listener, settings, shutdown)
                .await
                .map_err(|e| e.to_string())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("itc-bench serve: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `f` against a fresh server of `kind` (or the `--addr` server), then stops it.
async fn with_server<T>(
    args: &Args,
    kind: Kind,
    f: impl AsyncFnOnce(&Server) -> Result<T, BenchError>,
) -> Result<T, BenchError> {
    let server = match (&args.addr, kind) {
        (Some(url), Kind::External) => Server::external(url.clone(), kind, args.server_pid),
        _ => {
            let mut store = Vec::new();
            if let Some(kind) = args.store {
                store.push(format!("--store={}", format!("{kind:?}").to_lowercase()));
            }
            if let Some(level) = args.sync {
                store.push(format!("--sync={}", format!("{level:?}").to_lowercase()));
            }
            Server::spawn(kind, &store).await?
        }
    };
    let result = f(&server).await;
    server.stop().await;
    result
}

struct Run<'a> {
    args: &'a Args,
    plan: Plan,
    report: Report,
    /// ITC variants to measure where the store matters.
    stores: Vec<Kind>,
    failures: Vec<String>,
}

impl Run<'_> {
    /// The ITC variant for scenarios where the store does not matter much: the default,
    /// durable one.
    fn main_kind(&self) -> Kind {
        self.stores[0]
    }

    fn failed(&mut self, scenario: &str, error: &BenchError) {
        eprintln!("  {scenario}: FAILED: {error}");
        self.failures.push(format!("{scenario}: {error}"));
    }

    /// Runs `f` against the baseline, then against each of `kinds`: the baseline's result
    /// (`None` if it failed) and, for each ITC run that succeeded, its row name and
    /// result. Failures are recorded.
    async fn baseline_then<T>(
        &mut self,
        scenario: &str,
        kinds: &[Kind],
        f: impl AsyncFn(&Server) -> Result<T, BenchError>,
    ) -> (Option<T>, Vec<(String, T)>) {
        let base = with_server(self.args, Kind::Baseline, async |s| f(s).await).await;
        let base = self.keep(scenario, base);
        let mut itc = Vec::new();
        for &kind in kinds {
            let name = format!("{scenario} ({})", kind.label());
            match with_server(self.args, kind, async |s| f(s).await).await {
                Ok(v) => itc.push((name, v)),
                Err(e) => self.failed(&name, &e),
            }
        }
        (base, itc)
    }

    /// The rows of a unary load: calls/s against `target`, p50, and p99 (below
    /// `p99_below`, if given).
    fn add_unary(
        &mut self,
        name: &str,
        calls: &'static str,
        target: Target,
        base: Option<&unary::Figures>,
        itc: &unary::Figures,
        p99_below: Option<f64>,
    ) {
        self.report
            .add(name, calls, Unit::PerSecond, target, base.map(|b| b.rate), itc.rate);
        self.report.add(
            name,
            "call p50",
            Unit::Seconds,
            Target::None,
            base.map(|b| b.p50),
            itc.p50,
        );
        let p99_target = p99_below.map_or(Target::None, Target::Below);
        self.report.add(
            name,
            "call p99",
            Unit::Seconds,
            p99_target,
            base.map(|b| b.p99),
            itc.p99,
        );
    }

    async fn fanout(&mut self) {
        let stores = self.stores.clone();
        for (subscribers, events) in self.plan.fanout.clone() {
            let window = self.plan.window;
            let (base, itc) = self
                .baseline_then(&format!("fanout S={subscribers}"), &stores, async |s| {
                    fanout::throughput(s, subscribers, events, window).await
                })
                .await;
            for (name, v) in itc {
                let target = Target::RatioAtLeast(0.7);
                self.report
                    .add(&name, "delivered events", Unit::PerSecond, target, base, v);
            }
        }
    }

    async fn latency(&mut self) {
        let stores = self.stores.clone();
        for subscribers in self.plan.latency_subscribers.clone() {
            let (rate, duration) = (self.plan.latency_rate, self.plan.latency_duration);
            let scenario = format!("latency S={subscribers} at {rate:.0} deliveries/s");
            let (base, itc) = self
                .baseline_then(&scenario, &stores, async |s| {
                    fanout::latency(s, subscribers, rate, duration).await
                })
                .await;
            for (name, (p50, p99)) in itc {
                let (base50, base99) = (base.map(|b| b.0), base.map(|b| b.1));
                self.report
                    .add(&name, "publish->receive p50", Unit::Seconds, Target::None, base50, p50);
                let target = Target::RatioAtMost(1.25);
                self.report
                    .add(&name, "publish->receive p99", Unit::Seconds, target, base99, p99);
            }
        }
    }

    async fn filtered(&mut self) {
        let (tasks, per_task) = self.plan.filtered;
        let window = self.plan.window;
        let scenario = format!("filtered {tasks} subscribers, one task each");
        let (base, itc) = self
            .baseline_then(&scenario, &[self.main_kind()], async |s| {
                fanout::filtered(s, tasks, per_task, window).await
            })
            .await;
        for (name, v) in itc {
            let target = Target::RatioAtLeast(0.7);
            self.report
                .add(&name, "delivered events", Unit::PerSecond, target, base, v);
        }
    }

    async fn idle(&mut self) {
        let (streams, settle) = (self.plan.idle, self.plan.settle);
        let scenario = format!("idle {streams} subscriptions");
        let (base, itc) = self
            .baseline_then(&scenario, &[self.main_kind()], async |s| {
                streams::idle(s, streams, settle).await
            })
            .await;
        let base = base.flatten();
        for (name, v) in itc {
            let Some((rss, per_stream)) = v else {
                self.failed(&name, &BenchError::Failed("no server pid: memory unknown".into()));
                continue;
            };
            self.report.add(
                &name,
                "server RSS",
                Unit::Mebibytes,
                Target::Below(200.0),
                base.map(|b| b.0),
                rss,
            );
            let target = Target::RatioAtMost(1.5);
            self.report.add(
                &name,
                "RSS growth per stream",
                Unit::Kibibytes,
                target,
                base.map(|b| b.1),
                per_stream,
            );
        }
    }

    async fn unary(&mut self) {
        let bounds = self.plan.unary;
        let kind = self.main_kind();
        let calls = "calls (baseline: echo of the same sizes)";

        // GetStatus and Coordinate run first: the baseline's echo mirrors their sizes.
        let tasks = self.plan.status_tasks;
        let name = format!(
            "GetStatus page of 100 over {tasks} tasks, {} in flight",
            bounds.in_flight
        );
        match with_server(self.args, kind, async |s| unary::get_status(s, tasks, bounds).await).await {
            Ok((itc, sizes)) => {
                let base = with_server(self.args, Kind::Baseline, async |s| unary::echo(s, sizes, bounds).await).await;
                let base = self.keep(&format!("{name} (echo)"), base);
                let name = format!("{name} ({})", kind.label());
                let target = Target::RatioAtLeast(0.5);
                self.add_unary(&name, calls, target, base.as_ref(), &itc, Some(0.010));
            }
            Err(e) => self.failed(&name, &e),
        }

        let tasks = self.plan.coordinate_tasks;
        let name = format!("Coordinate on {tasks} tasks, {} in flight", bounds.in_flight);
        match with_server(self.args, kind, async |s| unary::coordinate(s, tasks, bounds).await).await {
            Ok((itc, sizes)) => {
                let base = with_server(self.args, Kind::Baseline, async |s| unary::echo(s, sizes, bounds).await).await;
                let base = self.keep(&format!("{name} (echo)"), base);
                let name = format!("{name} ({})", kind.label());
                let target = Target::RatioAtLeast(0.5);
                self.add_unary(&name, calls, target, base.as_ref(), &itc, None);
            }
            Err(e) => self.failed(&name, &e),
        }

        let agents = self.plan.agents;
        let stores = self.stores.clone();
        let (base, itc) = self
            .baseline_then(&format!("progress reports from {agents} agents"), &stores, async |s| {
                unary::progress(s, agents, bounds).await
            })
            .await;
        for (name, v) in itc {
            let target = Target::RatioAtLeast(0.5);
            self.add_unary(&name, "reports (baseline: publish)", target, base.as_ref(), &v, None);
        }
    }

    async fn heartbeats(&mut self) {
        let (sessions, period, measure) = (
            self.plan.heartbeat_sessions,
            self.plan.heartbeat_period,
            self.plan.heartbeat_measure,
        );
        let scenario = format!("{sessions} sessions heartbeating every {period:?}");
        let (base, itc) = self
            .baseline_then(&scenario, &[self.main_kind()], async |s| {
                streams::heartbeats(s, sessions, period, measure).await
            })
            .await;
        let base = base.flatten();
        for (name, v) in itc {
            match v {
                Some(cpu) => self
                    .report
                    .add(&name, "server CPU", Unit::PercentCore, Target::Below(5.0), base, cpu),
                None => self.failed(&name, &BenchError::Failed("no server pid: CPU unknown".into())),
            }
        }
    }

    /// The baseline's result, or `None` (recorded as a failure).
    fn keep<T>(&mut self, scenario: &str, result: Result<T, BenchError>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                self.failed(&format!("{scenario} (baseline)"), &e);
                None
            }
        }
    }
}

fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    serde_json::json!({
        "cores": std::thread::available_parallelism().map_or(0, usize::from),
        "cpu": cpu,
        "kernel": kernel,
        "itc_version": env!("CARGO_PKG_VERSION"),
    })
}

async fn bench(args: Args) -> ExitCode {
    let mut scenarios = args.scenarios.clone();
    if scenarios.is_empty() {
        scenarios = Scenario::value_variants().to_vec();
    }
    let mut seen = Vec::new();
    scenarios.retain(|s| {
        let new = !seen.contains(s);
        seen.push(*s);
        new
    });
    if let Some(addr) = &args.addr {
        let uri: Result<tonic::codegen::http::Uri, _> = addr.parse();
        if !uri.is_ok_and(|u| u.scheme().is_some() && u.authority().is_some()) {
            eprintln!("itc-bench: --addr {addr:?} is not a URL like http://127.0.0.1:50051");
            return ExitCode::from(2);
        }
    }
    if let Some(pid) = args.server_pid
        && !std::path::Path::new(&format!("/proc/{pid}")).exists()
    {
        eprintln!("itc-bench: --server-pid {pid}: no such process (give the pid of the server at --addr)");
        return ExitCode::from(2);
    }
    let mut plan = if args.quick { Plan::quick() } else { Plan::full() };
    if !args.subscribers.is_empty() {
        let known: Vec<usize> = plan.fanout.iter().map(|(s, _)| *s).collect();
        if let Some(unknown) = args.subscribers.iter().find(|s| !known.contains(s)) {
            eprintln!(
                "itc-bench: --subscribers {unknown} is not a size of this plan (it has {known:?}{})",
                if args.quick { " with --quick" } else { "" }
            );
            return ExitCode::from(2);
        }
        plan.fanout.retain(|(s, _)| args.subscribers.contains(s));
        plan.latency_subscribers.retain(|s| args.subscribers.contains(s));
        if plan.latency_subscribers.is_empty() && scenarios.contains(&Scenario::Latency) {
            eprintln!(
                "itc-bench: latency is measured with {:?} subscribers; --subscribers {:?} leaves it none",
                if args.quick { Plan::quick() } else { Plan::full() }.latency_subscribers,
                args.subscribers
            );
            return ExitCode::from(2);
        }
    }
    let stores = if args.addr.is_some() {
        vec![Kind::External]
    } else {
        vec![Kind::Durable, Kind::Memory]
    };
    let machine = machine();
    eprintln!(
        "itc-bench: {} cores, {}; {} repeat(s){}",
        machine["cores"],
        machine["cpu"].as_str().unwrap_or("?"),
        args.repeat,
        if args.quick { ", quick sizes" } else { "" }
    );
    let mut run = Run {
        args: &args,
        plan,
        report: Report::default(),
        stores,
        failures: Vec::new(),
    };
    for r in 1..=args.repeat {
        for scenario in &scenarios {
            eprintln!("[{r}/{}] {scenario:?}", args.repeat);
            match scenario {
                Scenario::Fanout => run.fanout().await,
                Scenario::Latency => run.latency().await,
                Scenario::Filtered => run.filtered().await,
                Scenario::Idle => run.idle().await,
                Scenario::Unary => run.unary().await,
                Scenario::Heartbeats => run.heartbeats().await,
            }
        }
    }

    let header = serde_json::json!({"run": {
        "machine": machine,
        "repeat": args.repeat,
        "quick": args.quick,
        "scenarios": scenarios.iter().map(|s| format!("{s:?}").to_lowercase()).collect::<Vec<_>>(),
        "failures": run.failures,
    }});
    if !args.json {
        println!("{}", run.report.table());
    }
    println!("{header}");
    for row in run.report.rows() {
        println!("{}", row.json());
    }
    let missed: Vec<&report::Row> = run.report.rows().iter().filter(|r| r.met() == Some(false)).collect();
    if !missed.is_empty() {
        eprintln!("targets missed: {}", missed.len());
    }
    if !run.failures.is_empty() {
        eprintln!("itc-bench: {} scenario run(s) failed:", run.failures.len());
        for failure in &run.failures {
            eprintln!("  {failure}");
        }
        return ExitCode::FAILURE;
    }
    if args.check && !missed.is_empty() {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
