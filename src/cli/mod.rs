//! The `clawfarm` command line: thin verbs over the library.
//!
//! `main` → [`run`] → `ExitCode`. Errors are printed once, as the whole chain
//! (`error: outer: inner: cause`), by `main`; verbs never print an error and return it too.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

use crate::desired::resolve::StoreResolver;
use crate::desired::{self, Desired, ParamEnv, gateway_port};
use crate::driver::fake::FakeDriver;
use crate::driver::qemu::accel::AccelMode;
use crate::driver::qemu::{QemuConfig, QemuDriver};
use crate::driver::{Driver, GuestHealth, Liveness};
use crate::home::Home;
use crate::plan::{Observed, PlanOptions};
use crate::reconcile::exec::ExecOptions;
use crate::reconcile::pass::{self, PassOptions};
use crate::state::events::{Event, EventSink};
use crate::state::record::{Origin, Phase, Record};
use crate::util::lock;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Output {
    /// For people.
    #[default]
    Text,
    /// For machines (stdout holds exactly one JSON document).
    Json,
}

/// Log format on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// JSON lines (for journald and friends).
    Json,
}

/// clawfarm: make this host's agent VMs match a folder of YAML manifests.
#[derive(Debug, Parser)]
#[command(name = "clawfarm", version, about, max_term_width = 100)]
pub struct Cli {
    /// Runtime root (default: $CLAWFARM_HOME, else ~/.clawfarm).
    #[arg(long, global = true, value_name = "DIR")]
    pub home: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t)]
    pub log_format: LogFormat,
    /// Accelerator for VMs started by this command: auto (KVM when verified to work, else
    /// TCG), kvm or tcg.
    #[arg(
        long,
        global = true,
        value_enum,
        env = "CLAWFARM_ACCEL",
        value_name = "MODE"
    )]
    pub accel: Option<AccelMode>,
    /// The verb.
    #[command(subcommand)]
    pub command: Command,
}

/// Manifest inputs and plan options shared by `plan` and `apply`.
#[derive(Debug, Args, Clone)]
pub struct PlanArgs {
    /// Manifest files or folders (searched recursively for .yaml, .yml, .json).
    #[arg(short = 'f', long = "filename", required = true, value_name = "PATH")]
    pub files: Vec<PathBuf>,
    /// Delete instances created by apply whose manifest is gone.
    #[arg(long)]
    pub prune: bool,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: Output,
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check manifests and the clawspecs they reference (exit 0 valid, 1 invalid).
    Validate {
        /// Manifest files or folders.
        #[arg(short = 'f', long = "filename", required = true, value_name = "PATH")]
        files: Vec<PathBuf>,
    },
    /// Show what apply would change; changes nothing (exit 0 none, 2 pending, 1 error).
    Plan(PlanArgs),
    /// Make the host match the manifests, once (exit 0 all succeeded, 1 otherwise).
    Apply {
        /// Inputs and plan options.
        #[command(flatten)]
        plan: PlanArgs,
        /// Actions run at once.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
        parallelism: u16,
        /// Do not wait for guests to become ready.
        #[arg(long)]
        no_wait: bool,
        /// How long to wait for another apply's lock (e.g. 0, 30s; default: forever).
        #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
        lock_timeout: Option<Duration>,
    },
    /// List instances, including unhealthy and exited ones.
    Ps {
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Output,
    },
    /// Stop an instance (graceful, then forced).
    Stop {
        /// CLAWID, name, or unique CLAWID prefix.
        id: String,
    },
    /// Start a stopped instance.
    Start {
        /// CLAWID, name, or unique CLAWID prefix.
        id: String,
        /// Do not wait for the guest to become ready.
        #[arg(long)]
        no_wait: bool,
    },
    /// Remove an instance (its volumes are kept unless --purge).
    Rm {
        /// Stop it first if it is running.
        #[arg(short, long)]
        force: bool,
        /// Also delete its volumes.
        #[arg(long)]
        purge: bool,
        /// CLAWID, name, or unique CLAWID prefix.
        id: String,
    },
    /// Write a new clawspec (and optionally a manifest using it): a terminal wizard, or
    /// flags with --non-interactive.
    #[command(after_long_help = crate::tui::wizard::EXAMPLES)]
    New(Box<crate::tui::wizard::NewArgs>),
    /// Print the JSON Schema of the manifest format (for editors).
    Schema,
    /// Print shell completions.
    Completions {
        /// Shell.
        shell: clap_complete::Shell,
    },
    /// Import a bundle and run one new instance of it (import-first; each run gets its own
    /// CLAWID with NAME as the prefix). Goes through the same engine as apply.
    Run {
        /// The `.clawbox` bundle.
        bundle: PathBuf,
        /// Name prefix of the CLAWID.
        #[arg(long)]
        name: String,
        /// A param value, KEY=VALUE (repeatable). Prefer --param-file or the prompt for
        /// secrets: the command line is visible in shell history and `ps`.
        #[arg(long = "param", value_name = "KEY=VALUE", value_parser = crate::desired::run::parse_param_arg)]
        params: Vec<(String, crate::util::secret::Secret)>,
        /// A file of KEY=VALUE lines (repeatable; later values win).
        #[arg(long = "param-file", value_name = "FILE")]
        param_files: Vec<PathBuf>,
        /// vCPUs.
        #[arg(long, default_value_t = crate::input::manifest::DEFAULT_CPUS)]
        cpus: u32,
        /// Memory (e.g. 2048, 2GiB, 512MiB).
        #[arg(long, default_value = "1024", value_parser = crate::input::manifest::parse_memory)]
        memory: u64,
        /// Host port forward HOST:GUEST on 127.0.0.1 (repeatable).
        #[arg(long = "port", value_name = "HOST:GUEST", value_parser = parse_port)]
        ports: Vec<crate::input::manifest::Port>,
        /// Do not wait for the guest to become ready.
        #[arg(long)]
        no_wait: bool,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Output,
    },
    /// Import a bundle into the store without running it (idempotent).
    Import {
        /// The `.clawbox` bundle (tar.gz, or a plain JSON clawspec).
        bundle: PathBuf,
    },
    /// List stored bundles and blobs, with sizes and the instances that use them.
    Images {
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Output,
    },
    /// Remove bundles and blobs that no instance uses (and leftovers of interrupted
    /// imports and downloads).
    Gc {
        /// Only show what would be removed.
        #[arg(long)]
        dry_run: bool,
        /// How long to wait for a running apply/watch (default: forever).
        #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
        lock_timeout: Option<Duration>,
    },
    /// Show the event log.
    Events {
        /// Follow: keep printing new events.
        #[arg(short, long)]
        follow: bool,
        /// Only this instance (CLAWID or name prefix).
        name: Option<String>,
    },
    /// Show an instance's logs: by default a summary (state, bootstrap phases, the end of
    /// the serial console).
    Logs {
        /// CLAWID, name, or unique CLAWID prefix.
        id: String,
        /// Keep printing new output until the VM stops (with --bootstrap: until the
        /// bootstrap ends).
        #[arg(short, long)]
        follow: bool,
        /// The serial console of the current boot.
        #[arg(long, group = "which")]
        serial: bool,
        /// The guest's bootstrap phases, with the log tail of a failed one.
        #[arg(long, group = "which")]
        bootstrap: bool,
        /// QEMU's own output and clawfarm's start/stop lines.
        #[arg(long, group = "which")]
        qemu: bool,
    },
    /// Log in to an instance as user claw over SSH, or run a command there
    /// (`clawfarm ssh NAME -- CMD...`).
    Ssh {
        /// CLAWID, name, or unique CLAWID prefix.
        id: String,
        /// Command to run instead of a login shell.
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "CMD"
        )]
        command: Vec<String>,
    },
    /// Reconcile a folder continuously: on file changes, on a periodic resync, and when a
    /// VM exits (restarted with backoff). SIGINT/SIGTERM exit 0 and leave the VMs running.
    Watch {
        /// The manifest folder (a git checkout, typically).
        dir: PathBuf,
        /// Periodic resync interval (catches drift no event reports).
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        resync: Duration,
        /// Quiet time after the last file event before reconciling.
        #[arg(long, default_value = "300ms", value_parser = humantime::parse_duration)]
        debounce: Duration,
        /// Delete instances whose manifest is gone (off by default: removing a file from
        /// the folder does not delete a VM unless asked; volumes are kept either way).
        #[arg(long)]
        prune: bool,
        /// Actions run at once.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
        parallelism: u16,
        /// How long to wait for another apply/watch's lock (default 0: refuse at once).
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
        lock_timeout: Duration,
    },
}

/// Entry point of the `clawfarm` binary.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let level = if matches!(cli.command, Command::Watch { .. }) {
        "info"
    } else {
        "warn"
    };
    init_logging(cli.log_format, level);
    match run(cli) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

fn init_logging(fmt: LogFormat, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CLAWFARM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match fmt {
        LogFormat::Text => b.try_init(),
        LogFormat::Json => b.json().try_init(),
    };
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// The `--accel` flag of this process (it wins over `CLAWFARM_ACCEL`).
static ACCEL_FLAG: std::sync::OnceLock<AccelMode> = std::sync::OnceLock::new();

/// The driver for this home: the fake when `CLAWFARM_DRIVER=fake` (tests), else QEMU.
pub fn make_driver(home: &Home) -> anyhow::Result<Arc<dyn Driver>> {
    match std::env::var("CLAWFARM_DRIVER").as_deref() {
        Ok("fake") => Ok(Arc::new(FakeDriver::new(home.clone()))),
        Ok("qemu") | Err(_) => Ok(Arc::new(host_driver(home)?)),
        Ok(other) => bail!("unknown CLAWFARM_DRIVER {other:?} (expected qemu or fake)"),
    }
}

/// The QEMU driver for this home, configured from the environment and `--accel`.
pub fn host_driver(home: &Home) -> anyhow::Result<QemuDriver> {
    let mut cfg = QemuConfig::from_env()?;
    if let Some(a) = ACCEL_FLAG.get() {
        cfg.accel = *a;
    }
    Ok(QemuDriver::with_config(home.clone(), cfg))
}

fn param_env_lookup(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Whether [`load_desired`] may prompt (on a terminal). Off for `validate` (it reports what
/// is missing) and `watch` (a long-running loop must never wait on a person).
static PROMPTS: AtomicBool = AtomicBool::new(true);

/// Load the desired state of `files` (all errors collected, never the first only).
///
/// On a terminal ([`interactive`]), params that nothing resolves are asked for
/// ([`crate::tui::prompt::TtyPrompter`]); Ctrl-C at a prompt is an error, before anything changes.
pub async fn load_desired(home: &Home, files: &[PathBuf]) -> anyhow::Result<Desired> {
    let key = home
        .secret_key()
        .context("cannot read the param digest key")?;
    let tty = crate::tui::prompt::TtyPrompter::new();
    let penv = ParamEnv {
        key: &key,
        env: &param_env_lookup,
        prompter: (PROMPTS.load(Ordering::Relaxed) && interactive())
            .then_some(&tty as &dyn desired::Prompter),
        command_line: false,
    };
    let d = desired::load(home, files, &StoreResolver, &penv).await;
    if let Some(at) = tty.interrupted() {
        bail!("interrupted at the prompt for {at}; nothing was changed");
    }
    Ok(d)
}

/// Run one parsed command; returns the exit code.
pub fn run(cli: Cli) -> anyhow::Result<u8> {
    let home = Home::resolve(cli.home.as_deref()).context("cannot find the runtime root")?;
    if matches!(
        cli.command,
        Command::Validate { .. } | Command::Watch { .. }
    ) {
        PROMPTS.store(false, Ordering::Relaxed);
    }
    if let Some(a) = cli.accel {
        let _ = ACCEL_FLAG.set(a);
    }
    match cli.command {
        Command::Validate { files } => validate(&home, &files),
        Command::Plan(args) => plan_cmd(&home, &args),
        Command::Apply {
            plan,
            parallelism,
            no_wait,
            lock_timeout,
        } => apply(&home, &plan, parallelism.into(), !no_wait, lock_timeout),
        Command::Ps { output } => ps(&home, output),
        Command::Stop { id } => stop(&home, &id),
        Command::Start { id, no_wait } => start(&home, &id, !no_wait),
        Command::Rm { force, purge, id } => rm(&home, &id, force, purge),
        Command::New(args) => crate::tui::wizard::run(&args),
        Command::Schema => {
            println!(
                "{}",
                serde_json::to_string_pretty(&crate::input::manifest::json_schema())?
            );
            Ok(0)
        }
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "clawfarm",
                &mut std::io::stdout(),
            );
            Ok(0)
        }
        Command::Run {
            bundle,
            name,
            params,
            param_files,
            cpus,
            memory,
            ports,
            no_wait,
            output,
        } => {
            let mut all = Vec::new();
            for f in &param_files {
                all.extend(crate::desired::run::read_param_file(f)?);
            }
            all.extend(params);
            let req = crate::desired::run::RunRequest {
                bundle,
                name,
                params: all,
                cpus,
                memory_mib: memory,
                ports,
                volumes: Vec::new(),
            };
            run_cmd(&home, &req, !no_wait, output)
        }
        Command::Import { bundle } => import_cmd(&home, &bundle),
        Command::Images { output } => images(&home, output),
        Command::Gc {
            dry_run,
            lock_timeout,
        } => gc(&home, dry_run, lock_timeout),
        Command::Events { follow, name } => events(&home, name.as_deref(), follow),
        Command::Watch {
            dir,
            resync,
            debounce,
            prune,
            parallelism,
            lock_timeout,
        } => {
            let mut cfg = crate::reconcile::watch::WatchConfig::new(dir);
            cfg.resync = resync;
            cfg.debounce = debounce;
            cfg.prune = prune;
            cfg.parallelism = parallelism.into();
            watch(&home, cfg, lock_timeout, cli.log_format)
        }
        Command::Logs {
            id,
            follow,
            serial,
            bootstrap,
            qemu,
        } => {
            let which = if serial {
                LogView::Serial
            } else if bootstrap {
                LogView::Bootstrap
            } else if qemu {
                LogView::Qemu
            } else {
                LogView::Summary
            };
            logs(&home, &id, which, follow)
        }
        Command::Ssh { id, command } => ssh(&home, &id, &command),
    }
}

/// `--prune`, unless some input could not be read (then what it holds is unknown).
fn prune_allowed(prune: bool, d: &Desired) -> bool {
    if prune && d.incomplete {
        eprintln!("warning: not pruning: some input could not be read (see the errors above)");
    }
    prune && !d.incomplete
}

fn print_diagnostics(d: &Desired) {
    for x in &d.diagnostics {
        eprintln!("{x}");
    }
}

fn validate(home: &Home, files: &[PathBuf]) -> anyhow::Result<u8> {
    home.ensure()
        .with_context(|| format!("cannot create {}", home.root().display()))?;
    let d = runtime()?.block_on(load_desired(home, files))?;
    print_diagnostics(&d);
    if d.diagnostics.is_empty() {
        eprintln!(
            "{} manifest file(s), {} instance(s): valid",
            d.files.len(),
            d.instances.len()
        );
        Ok(0)
    } else {
        eprintln!("{} problem(s) found", d.diagnostics.len());
        Ok(1)
    }
}

fn plan_cmd(home: &Home, args: &PlanArgs) -> anyhow::Result<u8> {
    home.ensure()
        .with_context(|| format!("cannot create {}", home.root().display()))?;
    let driver = make_driver(home)?;
    let mut d = runtime()?.block_on(load_desired(home, &args.files))?;
    let (actual, rec_errors) = crate::observe::observe(home, &*driver);
    desired::check_ports(&mut d, &actual);
    print_diagnostics(&d);
    let opts = PlanOptions {
        prune: prune_allowed(args.prune, &d),
        protected: d.protected.clone(),
    };
    let p = pass::plan_observed(&d.instances, &actual, &rec_errors, &opts);
    for e in &rec_errors {
        eprintln!("warning: {}", error_chain(e));
    }
    match args.output {
        Output::Text => print!("{}", p.render()),
        Output::Json => {
            let mut v = p.to_json();
            v["diagnostics"] = serde_json::to_value(&d.diagnostics)?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
    }
    Ok(if !d.diagnostics.is_empty() {
        1
    } else if p.is_empty() {
        0
    } else {
        2
    })
}

/// Take the applier lock of `home`, telling the user whom we wait for.
pub fn apply_lock(home: &Home, timeout: Option<Duration>) -> anyhow::Result<lock::FileLock> {
    let l = lock::lock(
        &home.apply_lock(),
        &format!("the apply lock of {}", home.root().display()),
        timeout,
        |holder| eprintln!("waiting for the apply lock held by {holder} ..."),
    )?;
    Ok(l)
}

/// An event sink that logs to `events.jsonl` and echoes progress to stderr.
pub fn progress_sink(home: &Home) -> EventSink {
    let t0 = Instant::now();
    EventSink::to_file(home.events_log()).with_echo(move |e: &Event| {
        if e.result == "started" && e.action == "wait-ready" {
            eprintln!(
                "[{:>6.1}s] {} waiting for the guest to become ready",
                t0.elapsed().as_secs_f64(),
                e.instance
            );
        } else if e.result != "started" {
            eprintln!(
                "[{:>6.1}s] {} {} {}{}",
                t0.elapsed().as_secs_f64(),
                e.instance,
                e.action,
                e.result,
                if e.result == "failed" {
                    format!(": {}", e.message)
                } else {
                    String::new()
                }
            );
        }
    })
}

fn apply(
    home: &Home,
    args: &PlanArgs,
    parallelism: usize,
    wait: bool,
    lock_timeout: Option<Duration>,
) -> anyhow::Result<u8> {
    home.ensure()
        .with_context(|| format!("cannot create {}", home.root().display()))?;
    let driver = make_driver(home)?;
    let _lock = apply_lock(home, lock_timeout)?;
    pass::sweep_temp_files(home);
    let rt = runtime()?;
    let mut d = rt.block_on(load_desired(home, &args.files))?;
    let (actual, record_errors) = crate::observe::observe(home, &*driver);
    desired::check_ports(&mut d, &actual);
    print_diagnostics(&d);
    let opts = PassOptions {
        plan: PlanOptions {
            prune: prune_allowed(args.prune, &d),
            protected: d.protected.clone(),
        },
        exec: ExecOptions {
            parallelism,
            wait,
            stop_after: None,
            lock_timeout: None,
        },
    };
    let out = rt.block_on(pass::reconcile_observed(
        home,
        driver,
        &d.instances,
        actual,
        record_errors,
        Origin::Manifest,
        progress_sink(home),
        &opts,
    ));
    let ok = out.report.ok() && d.diagnostics.is_empty();
    match args.output {
        Output::Text => {
            if out.plan.is_empty() {
                eprint!("{}", out.plan.render());
            }
            for (action, err) in out.report.root_failures() {
                eprintln!("failed: {action}: {err}");
            }
            println!("{}", out.report.summary());
        }
        Output::Json => {
            let v = serde_json::json!({
                "ok": ok,
                "summary": out.report.summary(),
                "changes": out.report.changes,
                "nodes": out.report.nodes,
                "diagnostics": d.diagnostics,
            });
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
    }
    Ok(if ok { 0 } else { 1 })
}

/// One row of `ps`.
#[derive(Debug, serde::Serialize)]
pub struct PsRow {
    /// CLAWID.
    pub clawid: String,
    /// Instance name.
    pub name: String,
    /// booting | ready | unhealthy | stopped | exited | creating | failed.
    pub status: String,
    /// `127.0.0.1:PORT` of the gateway, if any.
    pub gateway: Option<String>,
    /// QEMU pid when running.
    pub pid: Option<u32>,
    /// Last record update.
    #[serde(with = "crate::state::record::rfc3339")]
    pub updated: SystemTime,
    /// Last error (failed phase, exit code, log tail for unhealthy guests).
    pub last_error: Option<String>,
    /// Accelerator.
    pub accel: Option<String>,
    /// Restarts after unexpected exits.
    pub restarts: u32,
}

/// Status of one observed instance, with the guest's own report when it runs.
pub fn status_of(driver: &dyn Driver, o: &Observed) -> (String, Option<String>) {
    let r = &o.record;
    match &o.live {
        Liveness::Running(_) => match driver.guest_health(r) {
            GuestHealth::Ready => ("ready".into(), r.last_error.clone()),
            GuestHealth::Booting { .. } if r.phase == Phase::Unhealthy => {
                ("unhealthy".into(), r.last_error.clone())
            }
            GuestHealth::Booting { last } => {
                ("booting".into(), last.map(|l| format!("last phase: {l}")))
            }
            GuestHealth::Unhealthy { phase, code, tail } => (
                "unhealthy".into(),
                Some(format!("{phase} failed (exit {code}){}", last_line(&tail))),
            ),
        },
        Liveness::Exited => ("exited".into(), r.last_error.clone()),
        Liveness::NotStarted => (
            match r.phase {
                Phase::Creating => "creating",
                Phase::Failed => "failed",
                _ => "stopped",
            }
            .into(),
            r.last_error.clone(),
        ),
    }
}

fn last_line(tail: &str) -> String {
    tail.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| format!(": {}", l.trim()))
        .unwrap_or_default()
}

fn ago(t: SystemTime) -> String {
    let s = SystemTime::now()
        .duration_since(t)
        .unwrap_or_default()
        .as_secs();
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

fn ps(home: &Home, output: Output) -> anyhow::Result<u8> {
    let driver = make_driver(home)?;
    let (actual, errors) = crate::observe::observe(home, &*driver);
    let rows: Vec<PsRow> = actual
        .iter()
        .map(|o| {
            let (status, last_error) = status_of(&*driver, o);
            let r = &o.record;
            PsRow {
                clawid: r.clawid.clone(),
                name: r.name.clone(),
                status,
                gateway: gateway_port(&r.resources).map(|p| format!("127.0.0.1:{}", p.host)),
                pid: match o.live {
                    Liveness::Running(ref p) if p.pid != 0 => Some(p.pid),
                    _ => None,
                },
                updated: r.updated_at,
                last_error,
                accel: r.runtime.accel.clone(),
                restarts: r.restart_count,
            }
        })
        .collect();
    for e in &errors {
        eprintln!("warning: {}", error_chain(e));
    }
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        Output::Text => {
            let mut t = vec![
                [
                    "CLAWID",
                    "NAME",
                    "STATUS",
                    "GATEWAY",
                    "PID",
                    "UPDATED",
                    "LAST_ERROR",
                ]
                .map(String::from),
            ];
            for r in &rows {
                let mut err = r.last_error.clone().unwrap_or_default().replace('\n', " ");
                if err.chars().count() > 80 {
                    err = err.chars().take(77).collect::<String>() + "...";
                }
                t.push([
                    r.clawid.clone(),
                    r.name.clone(),
                    r.status.clone(),
                    r.gateway.clone().unwrap_or_else(|| "-".into()),
                    r.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                    ago(r.updated),
                    err,
                ]);
            }
            print_table(&t);
        }
    }
    Ok(0)
}

fn print_table<const N: usize>(rows: &[[String; N]]) {
    let mut w = [0usize; N];
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    for r in rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i + 1 == N {
                line.push_str(c);
            } else {
                line.push_str(&format!("{c:<width$}   ", width = w[i]));
            }
        }
        println!("{}", line.trim_end());
    }
}

/// Find one record by CLAWID, name, or unique CLAWID prefix.
pub fn find_record(home: &Home, id: &str) -> anyhow::Result<Record> {
    let (recs, _) = Record::read_all(home);
    if let Some(r) = recs.iter().find(|r| r.clawid == id) {
        return Ok(r.clone());
    }
    let by_name: Vec<&Record> = recs.iter().filter(|r| r.name == id).collect();
    if by_name.len() == 1 {
        return Ok(by_name[0].clone());
    }
    let by_prefix: Vec<&Record> = recs.iter().filter(|r| r.clawid.starts_with(id)).collect();
    match by_prefix.len() {
        1 => Ok(by_prefix[0].clone()),
        0 => bail!("no instance {id:?} (see clawfarm ps)"),
        _ => bail!(
            "{id:?} matches {} instances: {}",
            by_prefix.len(),
            by_prefix
                .iter()
                .map(|r| r.clawid.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn locked_record(home: &Home, id: &str) -> anyhow::Result<(lock::FileLock, Record)> {
    let r = find_record(home, id)?;
    let l = lock::lock(
        &lock::instance_lock_path(home, &r.clawid),
        &format!("the lock of instance {}", r.clawid),
        None,
        |h| eprintln!("waiting for instance {} (held by {h}) ...", r.clawid),
    )?;
    // Re-read under the lock: another command may have changed it.
    let r = Record::read(&Record::path(home, &r.clawid))?;
    Ok((l, r))
}

fn stop(home: &Home, id: &str) -> anyhow::Result<u8> {
    let driver = make_driver(home)?;
    let (_l, mut r) = locked_record(home, id)?;
    let events = EventSink::to_file(home.events_log());
    let outcome = if driver.kind() == "qemu" {
        let h = host_driver(home)?;
        Some(runtime()?.block_on(h.stop_instance(&r))?)
    } else {
        runtime()?.block_on(driver.stop(&r))?;
        None
    };
    r.phase = Phase::Stopped;
    r.runtime.process = None;
    r.set_condition("Ready", "false", "Stopped", "stopped by clawfarm stop");
    r.updated_at = SystemTime::now();
    r.write(home)?;
    let how = outcome.map(|o| format!(" ({o})")).unwrap_or_default();
    events.emit(Event::new(
        &r.clawid,
        "stop",
        "ok",
        format!("clawfarm stop{how}"),
    ));
    println!("{} stopped{how}", r.clawid);
    Ok(0)
}

fn start(home: &Home, id: &str, wait: bool) -> anyhow::Result<u8> {
    let driver = make_driver(home)?;
    let (_l, mut r) = locked_record(home, id)?;
    let events = EventSink::to_file(home.events_log());
    let rt = runtime()?;
    if r.phase == Phase::Creating {
        bail!(
            "instance {} was never fully created; run clawfarm apply to finish it",
            r.clawid
        );
    }
    let runtime_info = rt.block_on(driver.start(&r))?;
    r.runtime = runtime_info;
    r.phase = Phase::Booting;
    r.last_error = None;
    r.updated_at = SystemTime::now();
    r.write(home)?;
    events.emit(Event::new(
        &r.clawid,
        "start",
        "ok",
        "clawfarm start".into(),
    ));
    if wait {
        eprintln!(
            "{} started; waiting for the guest to become ready",
            r.clawid
        );
        match rt.block_on(driver.wait_ready(&r)) {
            Ok(()) => {
                r.phase = Phase::Ready;
                r.set_condition(
                    "Ready",
                    "true",
                    "GuestReady",
                    "every bootstrap phase succeeded",
                );
            }
            Err(e) => {
                r.phase = Phase::Unhealthy;
                r.last_error = Some(format!("wait-ready: {e:#}"));
                r.updated_at = SystemTime::now();
                r.write(home)?;
                return Err(e.context(format!("{} did not become ready", r.clawid)));
            }
        }
        r.updated_at = SystemTime::now();
        r.write(home)?;
    }
    println!("{} {}", r.clawid, if wait { "ready" } else { "started" });
    Ok(0)
}

fn rm(home: &Home, id: &str, force: bool, purge: bool) -> anyhow::Result<u8> {
    let driver = make_driver(home)?;
    let (_l, r) = locked_record(home, id)?;
    let rt = runtime()?;
    if let Liveness::Running(_) = driver.probe(&r) {
        if !force {
            bail!(
                "instance {} is running; stop it first or use rm -f",
                r.clawid
            );
        }
        rt.block_on(driver.stop(&r))?;
    }
    rt.block_on(driver.remove(&r.clawid, purge))?;
    EventSink::to_file(home.events_log()).emit(Event::new(
        &r.clawid,
        "remove",
        "ok",
        format!("clawfarm rm{}", if purge { " --purge" } else { "" }),
    ));
    println!("{} removed", r.clawid);
    Ok(0)
}

fn events(home: &Home, name: Option<&str>, follow: bool) -> anyhow::Result<u8> {
    let path = home.events_log();
    let mut shown = 0usize;
    loop {
        let all = crate::state::events::read(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        for e in all
            .iter()
            .skip(shown)
            .filter(|e| name.is_none_or(|n| e.instance.starts_with(n)))
        {
            println!(
                "{}  {:<20} {:<12} {:<9} {}",
                humantime::format_rfc3339_millis(e.time),
                e.instance,
                e.action,
                e.result,
                e.message
            );
        }
        shown = all.len();
        if !follow {
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

struct FolderRunner {
    home: Home,
    dir: PathBuf,
}

#[async_trait::async_trait]
impl crate::reconcile::watch::PassRunner for FolderRunner {
    async fn desired(&mut self) -> Desired {
        match load_desired(&self.home, std::slice::from_ref(&self.dir)).await {
            Ok(d) => d,
            Err(e) => {
                tracing::error!("{e:#}");
                Desired::default()
            }
        }
    }
}

fn watch(
    home: &Home,
    cfg: crate::reconcile::watch::WatchConfig,
    lock_timeout: Duration,
    _fmt: LogFormat,
) -> anyhow::Result<u8> {
    use crate::reconcile::watch::{Debouncer, watch_folder};
    home.ensure()
        .with_context(|| format!("cannot create {}", home.root().display()))?;
    if !cfg.dir.is_dir() {
        bail!("{} is not a folder", cfg.dir.display());
    }
    let driver = make_driver(home)?;
    let _lock = apply_lock(home, Some(lock_timeout))
        .context("another clawfarm apply or watch is running on this home")?;
    pass::sweep_temp_files(home);
    let rt = runtime()?;
    let stats = rt.block_on(async {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let _w = watch_folder(&cfg.dir, tx)
            .with_context(|| format!("cannot watch {}", cfg.dir.display()))?;
        let files = Debouncer::new(rx, cfg.debounce, cfg.max_delay);
        let mut runner = FolderRunner {
            home: home.clone(),
            dir: cfg.dir.clone(),
        };
        let shutdown = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        tracing::info!(dir = %cfg.dir.display(), resync = ?cfg.resync, prune = cfg.prune, "watching");
        anyhow::Ok(
            crate::reconcile::watch::run(
                home,
                driver,
                &cfg,
                &mut runner,
                files,
                EventSink::to_file(home.events_log()),
                shutdown,
            )
            .await,
        )
    })?;
    tracing::info!(
        passes = stats.total(),
        restarts = stats.restarts,
        "watch stopped; VMs left running"
    );
    Ok(0)
}

/// Which log `clawfarm logs` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogView {
    /// State, bootstrap phases and the end of the serial console.
    Summary,
    /// `serial.log`.
    Serial,
    /// The guest status lines of the current boot.
    Bootstrap,
    /// `qemu.log`.
    Qemu,
}

fn logs(home: &Home, id: &str, which: LogView, follow: bool) -> anyhow::Result<u8> {
    use std::io::Write;
    let rec = find_record(home, id)?;
    let drv = host_driver(home)?;
    let files = drv.files(&rec.clawid);
    let running = || drv.running(&rec.clawid, Some(&rec)).is_some();
    let mut out = std::io::stdout().lock();
    match which {
        LogView::Serial | LogView::Qemu => {
            let path = if which == LogView::Serial {
                files.serial_log()
            } else {
                files.qemu_log()
            };
            if !path.exists() && !follow {
                bail!("instance {} has no {} yet", rec.clawid, path.display());
            }
            follow_file(&path, 0, follow, &running, &mut out)?;
        }
        LogView::Bootstrap => {
            let nonce = boot_nonce(&drv, &rec)?;
            let mut shown = 0;
            loop {
                let st = crate::driver::qemu::guest::read_status(&files.status_log(), &nonce)?;
                for ev in &st.events[shown.min(st.events.len())..] {
                    writeln!(out, "{}", format_event(ev))?;
                }
                shown = st.events.len();
                out.flush()?;
                if !follow || st.done || st.failed.is_some() || !running() {
                    if st.events.is_empty() {
                        writeln!(out, "(no bootstrap report yet from boot {})", short(&nonce))?;
                    }
                    break;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        LogView::Summary => {
            let live = drv.probe(&rec);
            let o = Observed {
                record: rec.clone(),
                live: live.clone(),
            };
            let (status, last_error) = status_of(&drv, &o);
            writeln!(out, "{} ({})  status: {status}", rec.clawid, rec.name)?;
            let rt = drv
                .live_runtime(&rec)
                .unwrap_or_else(|| rec.runtime.clone());
            if let Some(a) = &rt.accel {
                writeln!(out, "  accel:    {a}")?;
            }
            match &live {
                Liveness::Running(p) => writeln!(
                    out,
                    "  qemu:     pid {}{}{}",
                    p.pid,
                    rt.ssh_port
                        .map(|p| format!(", ssh 127.0.0.1:{p}"))
                        .unwrap_or_default(),
                    rt.started_at
                        .map(|t| format!(", started {}", humantime::format_rfc3339_seconds(t)))
                        .unwrap_or_default()
                )?,
                Liveness::Exited => writeln!(out, "  qemu:     exited (see clawfarm logs --qemu)")?,
                Liveness::NotStarted => writeln!(out, "  qemu:     not running")?,
            }
            if let Some(p) = gateway_port(&rec.resources) {
                writeln!(out, "  gateway:  127.0.0.1:{} -> guest {}", p.host, p.guest)?;
            }
            if let Some(e) = &last_error {
                writeln!(out, "  error:    {}", e.replace('\n', "\n            "))?;
            }
            if let Some(nonce) = rt.boot_nonce.as_deref() {
                let st = crate::driver::qemu::guest::read_status(&files.status_log(), nonce)?;
                writeln!(out, "bootstrap (boot {}): {}", short(nonce), st.summary())?;
                for ev in &st.events {
                    writeln!(out, "  {}", format_event(ev).replace('\n', "\n  "))?;
                }
            }
            let serial = files.serial_log();
            let tail = crate::driver::qemu::read_tail(&serial, 64 * 1024);
            let lines: Vec<&str> = tail.lines().collect();
            let from = lines.len().saturating_sub(20);
            writeln!(
                out,
                "serial console ({}, last {} lines):",
                serial.display(),
                lines.len() - from
            )?;
            for l in &lines[from..] {
                writeln!(out, "  {l}")?;
            }
            out.flush()?;
            if follow {
                let len = std::fs::metadata(&serial).map(|m| m.len()).unwrap_or(0);
                follow_file(&serial, len, true, &running, &mut out)?;
            }
        }
    }
    Ok(0)
}

fn short(nonce: &str) -> &str {
    &nonce[..8.min(nonce.len())]
}

fn boot_nonce(drv: &QemuDriver, rec: &Record) -> anyhow::Result<String> {
    drv.live_runtime(rec)
        .and_then(|r| r.boot_nonce)
        .or_else(|| rec.runtime.boot_nonce.clone())
        .ok_or_else(|| anyhow::anyhow!("instance {} was never started", rec.clawid))
}

/// One status line for people: `TS  PHASE  STATUS [(exit N)]`, then the tail of a failure.
fn format_event(ev: &crate::driver::qemu::guest::GuestEvent) -> String {
    use crate::driver::qemu::guest::StepState;
    let state = match ev.state {
        StepState::Started => "started".to_string(),
        StepState::Ok => "ok".to_string(),
        StepState::Failed => format!("FAILED (exit {})", ev.code.unwrap_or(-1)),
    };
    let mut s = format!(
        "{:<20}  {:<24}  {state}",
        ev.ts.as_deref().unwrap_or("-"),
        ev.phase.to_string()
    );
    if let Some(t) = ev.tail.as_deref().filter(|t| !t.trim().is_empty()) {
        for l in t.lines() {
            s.push_str("\n    | ");
            s.push_str(l);
        }
    }
    s
}

/// Print `path` from `offset`; with `follow`, keep printing what is appended (starting
/// over when the file is truncated by a new boot) until `running` says the VM is gone.
fn follow_file(
    path: &std::path::Path,
    mut offset: u64,
    follow: bool,
    running: &dyn Fn() -> bool,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    loop {
        let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        if len < offset {
            offset = 0;
        }
        if len > offset {
            let mut f = std::fs::File::open(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            f.seek(SeekFrom::Start(offset))?;
            let mut buf = Vec::new();
            f.take(len - offset).read_to_end(&mut buf)?;
            out.write_all(&buf)?;
            out.flush()?;
            offset = len;
            continue;
        }
        if !follow || !running() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn ssh(home: &Home, id: &str, command: &[String]) -> anyhow::Result<u8> {
    use std::os::unix::process::CommandExt;
    let rec = find_record(home, id)?;
    let drv = host_driver(home)?;
    let mut cmd = drv.ssh_command(&rec, command)?;
    // exec only returns on failure.
    let e = cmd.exec();
    Err(e).context("cannot run ssh")
}

/// True when both stdin and stderr are terminals (prompts are allowed).
pub fn interactive() -> bool {
    std::io::stdin().is_terminal() && std::io::stderr().is_terminal()
}

/// `outer: inner: cause` for any error, each level once.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        parts.push(s.to_string());
        cur = s.source();
    }
    parts.join(": ")
}

fn parse_port(s: &str) -> Result<crate::input::manifest::Port, String> {
    let (h, g) = s.split_once(':').ok_or("expected HOST:GUEST")?;
    let host: u16 = h.parse().map_err(|_| format!("bad host port {h:?}"))?;
    let guest: u16 = g.parse().map_err(|_| format!("bad guest port {g:?}"))?;
    if host < 1024 || guest == 0 {
        return Err("host port must be 1024-65535, guest port 1-65535".into());
    }
    Ok(crate::input::manifest::Port {
        host,
        guest,
        name: None,
    })
}

fn run_cmd(
    home: &Home,
    req: &crate::desired::run::RunRequest,
    wait: bool,
    output: Output,
) -> anyhow::Result<u8> {
    home.ensure()
        .with_context(|| format!("cannot create {}", home.root().display()))?;
    let driver = make_driver(home)?;
    let rt = runtime()?;
    let key = home
        .secret_key()
        .context("cannot read the param digest key")?;
    let tty = crate::tui::prompt::TtyPrompter::new();
    let penv = ParamEnv {
        key: &key,
        env: &param_env_lookup,
        prompter: interactive().then_some(&tty as &dyn desired::Prompter),
        command_line: true,
    };
    let inst = rt.block_on(crate::desired::run::desired_instance(
        home,
        req,
        &StoreResolver,
        &penv,
    ));
    if let Some(at) = tty.interrupted() {
        bail!("interrupted at the prompt for {at}; nothing was changed");
    }
    let inst = inst?;
    let (actual, record_errors) = crate::observe::observe(home, &*driver);
    let mut d = Desired {
        instances: vec![inst.clone()],
        ..Desired::default()
    };
    desired::check_ports(&mut d, &actual);
    if let Some(dg) = d.diagnostics.first() {
        bail!("{}", dg.message);
    }
    eprintln!("{}: creating from {}", inst.clawid, req.bundle.display());
    // No apply lock: a run creates a CLAWID nobody else can plan; its nodes take the
    // instance lock like every mutation.
    let opts = PassOptions {
        plan: PlanOptions::default(),
        exec: ExecOptions {
            wait,
            ..ExecOptions::default()
        },
    };
    let out = rt.block_on(pass::reconcile_observed(
        home,
        driver,
        &d.instances,
        actual,
        record_errors,
        Origin::Run,
        progress_sink(home),
        &opts,
    ));
    let ok = out.report.ok();
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "ok": ok,
                "clawid": inst.clawid,
                "name": inst.name,
                "nodes": out.report.nodes,
            }))?
        ),
        Output::Text => {
            for (action, err) in out.report.root_failures() {
                eprintln!("failed: {action}: {err}");
            }
            println!("{}", inst.clawid);
        }
    }
    Ok(if ok { 0 } else { 1 })
}

fn import_cmd(home: &Home, path: &std::path::Path) -> anyhow::Result<u8> {
    home.ensure()
        .with_context(|| format!("cannot create {}", home.root().display()))?;
    let b = runtime()?.block_on(crate::store::bundle::import(
        home,
        path,
        &crate::store::progress::Progress::stderr(),
    ))?;
    println!(
        "{} {} ({})",
        b.digest,
        b.clawspec.name,
        if b.fresh {
            "imported"
        } else {
            "already imported"
        }
    );
    Ok(0)
}

fn human_size(n: u64) -> String {
    let mut v = n as f64;
    for unit in ["B", "KiB", "MiB", "GiB", "TiB"] {
        if v < 1024.0 || unit == "TiB" {
            return if unit == "B" {
                format!("{n} B")
            } else {
                format!("{v:.1} {unit}")
            };
        }
        v /= 1024.0;
    }
    unreachable!()
}

fn images(home: &Home, output: Output) -> anyhow::Result<u8> {
    let items = crate::store::bundle::list(home);
    let (records, _) = Record::read_all(home);
    // Which instances use each bundle, and through their bundles, each blob.
    let mut users: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for r in &records {
        users
            .entry(r.build.bundle.clone())
            .or_default()
            .push(r.clawid.clone());
    }
    for it in &items {
        if it.kind == crate::store::bundle::StoredKind::Bundle {
            let ids = users.get(&it.digest).cloned().unwrap_or_default();
            for b in &it.blobs {
                users
                    .entry(b.clone())
                    .or_default()
                    .extend(ids.iter().cloned());
            }
        }
    }
    for v in users.values_mut() {
        v.sort();
        v.dedup();
    }
    match output {
        Output::Json => {
            let rows: Vec<serde_json::Value> = items
                .iter()
                .map(|it| {
                    let mut v = serde_json::to_value(it).expect("items serialize");
                    v["used_by"] =
                        serde_json::json!(users.get(&it.digest).cloned().unwrap_or_default());
                    v
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&rows)?);
        }
        Output::Text => {
            let mut t = vec![["KIND", "DIGEST", "NAME", "SIZE", "USED BY"].map(String::from)];
            for it in &items {
                let used = users.get(&it.digest).cloned().unwrap_or_default();
                t.push([
                    format!("{:?}", it.kind).to_lowercase(),
                    crate::plan::short(&it.digest).to_string(),
                    it.name.clone().unwrap_or_else(|| "-".into()),
                    human_size(it.size),
                    if used.is_empty() {
                        "-".into()
                    } else {
                        used.join(",")
                    },
                ]);
            }
            print_table(&t);
        }
    }
    Ok(0)
}

fn gc(home: &Home, dry_run: bool, lock_timeout: Option<Duration>) -> anyhow::Result<u8> {
    home.ensure()
        .with_context(|| format!("cannot create {}", home.root().display()))?;
    // Under the apply lock: no apply can be importing or planning on what we remove.
    let _lock = apply_lock(home, lock_timeout)?;
    let (records, errors) = Record::read_all(home);
    if !errors.is_empty() {
        for e in &errors {
            eprintln!("error: {}", error_chain(e));
        }
        bail!("refusing to collect garbage while some records cannot be read");
    }
    let referenced = records.iter().map(|r| r.build.bundle.clone()).collect();
    let rep = crate::store::bundle::gc(home, &referenced, dry_run);
    let verb = if dry_run { "would remove" } else { "removed" };
    for it in &rep.removed {
        println!(
            "{verb} {} {} ({})",
            format!("{:?}", it.kind).to_lowercase(),
            it.digest,
            human_size(it.size)
        );
    }
    for p in &rep.temp {
        println!("{verb} leftover {}", p.display());
    }
    for f in &rep.failures {
        eprintln!("error: {f:?}");
    }
    println!(
        "{} {}, kept {} item(s)",
        verb,
        human_size(rep.freed_bytes),
        rep.kept.len()
    );
    Ok(if rep.failures.is_empty() { 0 } else { 1 })
}
