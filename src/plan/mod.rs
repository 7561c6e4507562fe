//! The planner: desired × actual → a DAG of idempotent actions. Pure and deterministic:
//! no I/O, no clock, no randomness; the same input always gives the same plan text.
//!
//! Per instance the diff is one of create, start, stop, restart (resources changed),
//! replace (bundle, params or volumes changed), delete (only with prune), update (record
//! only: a stopped VM whose resources changed) or nothing. Work shared by several
//! instances (importing one bundle, fetching one base image) is one node. See
//! `rfc/004-reconcile-loop.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};
use std::sync::Arc;

use petgraph::Direction;
use petgraph::graph::{DiGraph, NodeIndex};
use serde::Serialize;

use crate::desired::{BundleDesired, DesiredInstance};
use crate::driver::Liveness;
use crate::input::clawspec::Image;
use crate::input::manifest::DesiredState;
use crate::observe::Observed;
use crate::state::record::{Origin, Phase, Record};
use crate::util::text::short;

/// One idempotent step. Instance actions name the instance by CLAWID.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Import a bundle into `bundles/<digest>/`.
    ImportBundle {
        /// Bundle digest.
        digest: String,
    },
    /// Fetch and verify a remote image blob.
    FetchBlob {
        /// Expected SHA-256.
        sha256: String,
        /// The image ref it comes from (for messages).
        reference: String,
    },
    /// Stop the VM (graceful, then forced).
    Stop {
        /// Instance.
        clawid: String,
    },
    /// Remove the instance folder (volumes are kept unless purged).
    Remove {
        /// Instance.
        clawid: String,
    },
    /// Create the qcow2 overlay.
    CreateDisk {
        /// Instance.
        clawid: String,
    },
    /// Write the cloud-init seed.
    WriteSeed {
        /// Instance.
        clawid: String,
    },
    /// Start QEMU.
    Start {
        /// Instance.
        clawid: String,
    },
    /// Wait until the guest reports ready.
    WaitReady {
        /// Instance.
        clawid: String,
    },
    /// Save the running state and end QEMU (`state: suspended`).
    Suspend {
        /// Instance.
        clawid: String,
    },
}

impl Action {
    /// The instance this action belongs to, if any.
    pub fn clawid(&self) -> Option<&str> {
        match self {
            Action::ImportBundle { .. } | Action::FetchBlob { .. } => None,
            Action::Stop { clawid }
            | Action::Remove { clawid }
            | Action::CreateDisk { clawid }
            | Action::WriteSeed { clawid }
            | Action::Start { clawid }
            | Action::WaitReady { clawid }
            | Action::Suspend { clawid } => Some(clawid),
        }
    }

    /// Short verb, e.g. `create-disk`.
    pub fn verb(&self) -> &'static str {
        match self {
            Action::ImportBundle { .. } => "import-bundle",
            Action::FetchBlob { .. } => "fetch-blob",
            Action::Stop { .. } => "stop",
            Action::Remove { .. } => "remove",
            Action::CreateDisk { .. } => "create-disk",
            Action::WriteSeed { .. } => "write-seed",
            Action::Start { .. } => "start",
            Action::WaitReady { .. } => "wait-ready",
            Action::Suspend { .. } => "suspend",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::ImportBundle { digest } => write!(f, "import-bundle {}", short(digest)),
            Action::FetchBlob { sha256, reference } => {
                write!(f, "fetch-blob {} ({reference})", short(sha256))
            }
            other => write!(f, "{} {}", other.verb(), other.clawid().unwrap_or_default()),
        }
    }
}

/// What happens to one instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    /// New instance.
    Create,
    /// Bundle, params or volumes changed: new disk and seed.
    Replace,
    /// Resources changed: stop and start with the new ones.
    Restart,
    /// Not running but should be.
    Start,
    /// Running but should not be.
    Stop,
    /// Should be suspended: running (suspend it) or cold (boot it, then suspend it).
    Suspend,
    /// Record-only change (e.g. resources of a stopped VM).
    Update,
    /// Gone from the manifests, and pruning is on.
    Delete,
    /// Nothing to do.
    Noop,
}

impl ChangeKind {
    /// Symbol for the plan text.
    pub fn symbol(self) -> char {
        match self {
            ChangeKind::Create => '+',
            ChangeKind::Replace => '±',
            ChangeKind::Restart => '~',
            ChangeKind::Start => '>',
            ChangeKind::Stop => '.',
            ChangeKind::Suspend => '_',
            ChangeKind::Update => '~',
            ChangeKind::Delete => '-',
            ChangeKind::Noop => ' ',
        }
    }
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Create => "create",
            ChangeKind::Replace => "replace",
            ChangeKind::Restart => "restart",
            ChangeKind::Start => "start",
            ChangeKind::Stop => "stop",
            ChangeKind::Suspend => "suspend",
            ChangeKind::Update => "update",
            ChangeKind::Delete => "delete",
            ChangeKind::Noop => "noop",
        }
    }
}

/// The diff of one instance and the nodes that carry it out.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    /// Instance name.
    pub name: String,
    /// CLAWID.
    pub clawid: String,
    /// Kind of change.
    pub kind: ChangeKind,
    /// Why, in words (no secret values: a changed secret param says only that it changed).
    pub reasons: Vec<String>,
    /// Nodes of this instance's own chain, in order.
    #[serde(skip)]
    pub nodes: Vec<NodeIndex>,
}

/// Why an instance whose manifest file is unreadable or invalid is kept.
pub const LEFT_ALONE_INVALID: &str = "manifest file invalid or unreadable";

/// Planner options.
#[derive(Debug, Clone, Default)]
pub struct PlanOptions {
    /// Delete manifest-owned instances whose manifest is gone.
    pub prune: bool,
    /// Instance names that must not be deleted even when absent from the desired set
    /// (their manifest file failed to parse).
    pub protected: BTreeSet<String>,
}

/// A plan: the per-instance changes and the DAG of actions.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// One change per instance (desired or actual), sorted by name; includes no-ops.
    pub changes: Vec<Change>,
    /// The DAG; an edge `a → b` means `b` runs after `a` succeeded.
    pub graph: DiGraph<Action, ()>,
}

impl Plan {
    /// True when nothing would change.
    pub fn is_empty(&self) -> bool {
        self.changes.iter().all(|c| c.kind == ChangeKind::Noop)
    }

    /// Number of changes of each kind (no-ops included).
    pub fn counts(&self) -> BTreeMap<ChangeKind, usize> {
        let mut m = BTreeMap::new();
        for c in &self.changes {
            *m.entry(c.kind).or_insert(0) += 1;
        }
        m
    }

    /// Nodes in a deterministic topological order (by node index among ready nodes).
    pub fn topo_order(&self) -> Vec<NodeIndex> {
        let g = &self.graph;
        let mut indeg: Vec<usize> = g
            .node_indices()
            .map(|n| g.neighbors_directed(n, Direction::Incoming).count())
            .collect();
        let mut ready: BTreeSet<NodeIndex> =
            g.node_indices().filter(|n| indeg[n.index()] == 0).collect();
        let mut out = Vec::with_capacity(g.node_count());
        while let Some(n) = ready.pop_first() {
            out.push(n);
            for m in g.neighbors_directed(n, Direction::Outgoing) {
                indeg[m.index()] -= 1;
                if indeg[m.index()] == 0 {
                    ready.insert(m);
                }
            }
        }
        out
    }

    /// Human-readable plan text (deterministic).
    pub fn render(&self) -> String {
        let mut s = String::new();
        let changed: Vec<&Change> = self
            .changes
            .iter()
            .filter(|c| c.kind != ChangeKind::Noop)
            .collect();
        if changed.is_empty() {
            let n = self.unchanged().count();
            let alone = self.left_alone();
            s.push_str("No changes.");
            if n > 0 || alone.is_empty() {
                let _ = write!(
                    s,
                    " {n} instance{} up to date.",
                    if n == 1 { "" } else { "s" }
                );
            }
            if !alone.is_empty() {
                let _ = write!(s, " {alone}");
            }
            s.push('\n');
            return s;
        }
        let w = changed.iter().map(|c| c.name.len()).max().unwrap_or(0);
        for c in &changed {
            let _ = write!(
                s,
                "{} {:<w$}  {:<7}  {}",
                c.kind.symbol(),
                c.name,
                c.kind.as_str(),
                c.clawid,
            );
            if !c.reasons.is_empty() {
                let _ = write!(s, "  ({})", c.reasons.join("; "));
            }
            s.push('\n');
        }
        s.push('\n');
        let _ = writeln!(s, "Actions ({}):", self.graph.node_count());
        for n in self.topo_order() {
            let deps: Vec<String> = self
                .graph
                .neighbors_directed(n, Direction::Incoming)
                .map(|d| format!("#{}", d.index()))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let _ = write!(s, "  #{:<3} {}", n.index(), self.graph[n]);
            if !deps.is_empty() {
                let _ = write!(s, "  after {}", deps.join(","));
            }
            s.push('\n');
        }
        s.push('\n');
        s.push_str(&self.summary_line());
        s.push('\n');
        s
    }

    /// `Plan: 1 to create, …, 3 unchanged.`
    pub fn summary_line(&self) -> String {
        let counts = self.counts();
        let mut parts = Vec::new();
        for k in [
            ChangeKind::Create,
            ChangeKind::Replace,
            ChangeKind::Restart,
            ChangeKind::Start,
            ChangeKind::Stop,
            ChangeKind::Suspend,
            ChangeKind::Update,
            ChangeKind::Delete,
        ] {
            if let Some(n) = counts.get(&k) {
                parts.push(format!("{n} to {}", k.as_str()));
            }
        }
        parts.push(format!("{} unchanged", self.unchanged().count()));
        let alone = self.left_alone();
        if alone.is_empty() {
            format!("Plan: {}.", parts.join(", "))
        } else {
            format!("Plan: {}. {alone}", parts.join(", "))
        }
    }

    /// No-op changes of instances that are as desired.
    fn unchanged(&self) -> impl Iterator<Item = &Change> {
        self.changes
            .iter()
            .filter(|c| c.kind == ChangeKind::Noop && c.reasons.is_empty())
    }

    /// `2 left alone: alpha, beta (manifest file invalid).`, or empty: the instances that
    /// no manifest describes and that are kept, grouped by why.
    fn left_alone(&self) -> String {
        let mut by_reason: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for c in &self.changes {
            if c.kind == ChangeKind::Noop
                && let Some(r) = c.reasons.first()
            {
                by_reason.entry(r).or_default().push(&c.name);
            }
        }
        by_reason
            .iter()
            .map(|(why, names)| {
                format!("{} left alone: {} ({why}).", names.len(), names.join(", "))
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Machine-readable plan.
    pub fn to_json(&self) -> serde_json::Value {
        let actions: Vec<serde_json::Value> = self
            .topo_order()
            .into_iter()
            .map(|n| {
                let mut v = serde_json::to_value(&self.graph[n]).expect("actions serialize");
                let deps: BTreeSet<usize> = self
                    .graph
                    .neighbors_directed(n, Direction::Incoming)
                    .map(|d| d.index())
                    .collect();
                v["id"] = n.index().into();
                v["after"] = serde_json::to_value(deps).expect("ints serialize");
                v
            })
            .collect();
        let counts: BTreeMap<&str, usize> = self
            .counts()
            .into_iter()
            .map(|(k, v)| (k.as_str(), v))
            .collect();
        serde_json::json!({
            "changes": self.changes,
            "actions": actions,
            "counts": counts,
            "empty": self.is_empty(),
        })
    }
}

struct Builder {
    graph: DiGraph<Action, ()>,
    index: BTreeMap<Action, NodeIndex>,
}

impl Builder {
    /// The node of `a`, added once (shared work is one node).
    fn node(&mut self, a: Action) -> NodeIndex {
        if let Some(n) = self.index.get(&a) {
            return *n;
        }
        let n = self.graph.add_node(a.clone());
        self.index.insert(a, n);
        n
    }
    fn edge(&mut self, from: NodeIndex, to: NodeIndex) {
        if from != to && self.graph.find_edge(from, to).is_none() {
            self.graph.add_edge(from, to, ());
        }
    }
    /// A linear chain of instance actions; returns its nodes.
    fn chain(&mut self, actions: Vec<Action>) -> Vec<NodeIndex> {
        let nodes: Vec<NodeIndex> = actions.into_iter().map(|a| self.node(a)).collect();
        for w in nodes.windows(2) {
            self.edge(w[0], w[1]);
        }
        nodes
    }
}

/// The shared nodes a fresh disk of `bundle` needs: its import (when not imported yet)
/// and the fetch of its base image (a `run` layer backs on it too, rfc/010).
fn prerequisites(b: &mut Builder, bundle: &BundleDesired) -> Vec<NodeIndex> {
    let mut out = Vec::new();
    if !bundle.imported {
        out.push(b.node(Action::ImportBundle {
            digest: bundle.digest.clone(),
        }));
    }
    if let Some(base) = bundle.clawspec.image.iter().find(|i| i.name == "base") {
        out.push(b.node(fetch(base)));
    }
    out
}

fn fetch(img: &Image) -> Action {
    Action::FetchBlob {
        sha256: img.sha256.clone(),
        reference: img.reference.clone(),
    }
}

/// Why a replace is needed (empty when the build inputs are equal).
fn replace_reasons(d: &DesiredInstance, r: &Record, secret_keys: &BTreeSet<&str>) -> Vec<String> {
    let mut out = Vec::new();
    if d.build.bundle != r.build.bundle {
        out.push(format!(
            "bundle {} → {}",
            short(&r.build.bundle),
            short(&d.build.bundle)
        ));
    }
    let keys: BTreeSet<&String> = d.build.params.keys().chain(r.build.params.keys()).collect();
    for k in keys {
        let (old, new) = (r.build.params.get(k), d.build.params.get(k));
        if old == new {
            continue;
        }
        let what = match (old, new) {
            (None, Some(_)) => "added",
            (Some(_), None) => "removed",
            _ => "changed",
        };
        let tag = if secret_keys.contains(k.as_str()) {
            " (sensitive value)"
        } else {
            ""
        };
        out.push(format!("param {k} {what}{tag}"));
    }
    if d.build.volumes != r.build.volumes {
        out.push("volumes changed".into());
    }
    out
}

/// Why a restart is needed (empty when resources are equal).
fn restart_reasons(d: &DesiredInstance, r: &Record) -> Vec<String> {
    let (a, b) = (&r.resources, &d.resources);
    let mut out = Vec::new();
    if a.cpus != b.cpus {
        out.push(format!("cpus {} → {}", a.cpus, b.cpus));
    }
    if a.memory_mib != b.memory_mib {
        out.push(format!("memory {} → {} MiB", a.memory_mib, b.memory_mib));
    }
    if a.ports != b.ports {
        let f = |p: &[crate::input::manifest::Port]| {
            let v: Vec<String> = p
                .iter()
                .map(|p| format!("{}:{}", p.host, p.guest))
                .collect();
            format!("[{}]", v.join(","))
        };
        out.push(format!("ports {} → {}", f(&a.ports), f(&b.ports)));
    }
    out
}

/// Compute the plan. `desired` and `actual` may come in any order; the result does not
/// depend on it.
pub fn plan(desired: &[Arc<DesiredInstance>], actual: &[Observed], opts: &PlanOptions) -> Plan {
    let mut b = Builder {
        graph: DiGraph::new(),
        index: BTreeMap::new(),
    };
    // Instances are keyed by CLAWID: a manifest instance's CLAWID is derived from its name,
    // and `run` instances share a name prefix but never a CLAWID.
    let want: BTreeMap<&str, &DesiredInstance> =
        desired.iter().map(|d| (d.clawid.as_str(), &**d)).collect();
    let have: BTreeMap<&str, &Observed> = actual
        .iter()
        .map(|o| (o.record.clawid.as_str(), o))
        .collect();
    let ids: BTreeSet<&str> = want.keys().chain(have.keys()).copied().collect();

    let mut changes = Vec::new();
    // Host ports an instance frees (stop) and claims (start), for ordering across instances.
    let mut frees: Vec<(u16, NodeIndex)> = Vec::new();
    let mut claims: Vec<(u16, NodeIndex)> = Vec::new();

    for id in ids {
        let d = want.get(id).copied();
        let o = have.get(id).copied();
        let clawid = id.to_string();
        let name = d
            .map(|d| d.name.as_str())
            .or_else(|| o.map(|o| o.record.name.as_str()))
            .unwrap_or_default();
        let running = o.is_some_and(Observed::is_running);
        let id = || clawid.clone();
        let mut reasons = Vec::new();
        let mut actions: Vec<Action> = Vec::new();
        let mut needs_prereq = false;

        let kind = match (d, o) {
            (None, None) => continue,
            (None, Some(o)) => {
                let deletable = opts.prune
                    && o.record.origin == Origin::Manifest
                    && !opts.protected.contains(name);
                if deletable {
                    reasons.push("manifest removed".into());
                    if running {
                        actions.push(Action::Stop { clawid: id() });
                    }
                    actions.push(Action::Remove { clawid: id() });
                    ChangeKind::Delete
                } else {
                    // Kept, and the plan says why (a "no changes" that hides an invalid
                    // manifest would read as "all is well").
                    reasons.push(if opts.protected.contains(name) {
                        LEFT_ALONE_INVALID.into()
                    } else if o.record.origin != Origin::Manifest {
                        "not managed by manifests".into()
                    } else {
                        "not in the manifests (kept without --prune)".into()
                    });
                    ChangeKind::Noop
                }
            }
            (Some(d), None) => {
                needs_prereq = true;
                actions.extend([
                    Action::CreateDisk { clawid: id() },
                    Action::WriteSeed { clawid: id() },
                ]);
                if d.state != DesiredState::Stopped {
                    actions.extend([
                        Action::Start { clawid: id() },
                        Action::WaitReady { clawid: id() },
                    ]);
                }
                if d.state == DesiredState::Suspended {
                    actions.push(Action::Suspend { clawid: id() });
                }
                ChangeKind::Create
            }
            (Some(d), Some(o)) => {
                let r = &o.record;
                let secret_keys: BTreeSet<&str> = d
                    .params
                    .iter()
                    .filter(|p| p.secret)
                    .map(|p| p.key.as_str())
                    .collect();
                let rep = replace_reasons(d, r, &secret_keys);
                let res = restart_reasons(d, r);
                let want_run = d.state == DesiredState::Running;
                let want_suspended = d.state == DesiredState::Suspended;
                // Booted (and, for `suspended`, saved) at the end of a chain.
                let run_tail = |a: &mut Vec<Action>| {
                    if d.state != DesiredState::Stopped {
                        a.extend([
                            Action::Start { clawid: id() },
                            Action::WaitReady { clawid: id() },
                        ]);
                    }
                    if want_suspended {
                        a.push(Action::Suspend { clawid: id() });
                    }
                };
                if !rep.is_empty() {
                    reasons = rep;
                    needs_prereq = true;
                    if running {
                        actions.push(Action::Stop { clawid: id() });
                    }
                    actions.extend([
                        Action::Remove { clawid: id() },
                        Action::CreateDisk { clawid: id() },
                        Action::WriteSeed { clawid: id() },
                    ]);
                    run_tail(&mut actions);
                    ChangeKind::Replace
                } else if r.phase == Phase::Creating {
                    // A create or replace that did not finish: run the (idempotent) chain again.
                    reasons.push("previous apply did not finish".into());
                    needs_prereq = true;
                    actions.extend([
                        Action::CreateDisk { clawid: id() },
                        Action::WriteSeed { clawid: id() },
                    ]);
                    if !want_run && !want_suspended && running {
                        actions.push(Action::Stop { clawid: id() });
                    } else {
                        run_tail(&mut actions);
                    }
                    ChangeKind::Create
                } else if !res.is_empty() {
                    reasons = res;
                    if want_run || (want_suspended && running) {
                        if running {
                            actions.push(Action::Stop { clawid: id() });
                        }
                        run_tail(&mut actions);
                        ChangeKind::Restart
                    } else if running {
                        actions.push(Action::Stop { clawid: id() });
                        ChangeKind::Stop
                    } else {
                        ChangeKind::Update
                    }
                } else if want_run && !running {
                    reasons.push(match (&o.live, r.phase) {
                        _ if o.suspended => "suspended: start resumes it".into(),
                        (Liveness::Exited, _) => "exited unexpectedly".into(),
                        (_, Phase::Failed) => "last start failed".into(),
                        _ => "not running".into(),
                    });
                    run_tail(&mut actions);
                    ChangeKind::Start
                } else if want_suspended && running {
                    reasons.push("desired state suspended".into());
                    actions.push(Action::Suspend { clawid: id() });
                    ChangeKind::Suspend
                } else if want_suspended && !o.suspended {
                    // Nothing saved to resume: boot it once, then save it.
                    reasons.push("no saved state: boot, then suspend".into());
                    run_tail(&mut actions);
                    ChangeKind::Suspend
                } else if !want_run && running {
                    reasons.push("desired state stopped".into());
                    actions.push(Action::Stop { clawid: id() });
                    ChangeKind::Stop
                } else if !want_run && r.desired_state != d.state {
                    ChangeKind::Update
                } else if r.origin != Origin::Manifest {
                    reasons.push("adopted by manifest".into());
                    ChangeKind::Update
                } else {
                    ChangeKind::Noop
                }
            }
        };

        let nodes = b.chain(actions);
        if needs_prereq {
            let d = d.expect("prerequisites only for desired instances");
            let pre = prerequisites(&mut b, &d.bundle);
            if let Some(first_disk) = nodes
                .iter()
                .find(|n| matches!(b.graph[**n], Action::CreateDisk { .. }))
            {
                for p in pre {
                    b.edge(p, *first_disk);
                }
            }
        }
        for &n in &nodes {
            match &b.graph[n] {
                Action::Stop { .. } => {
                    if let Some(o) = o {
                        frees.extend(o.record.resources.ports.iter().map(|p| (p.host, n)));
                    }
                }
                Action::Start { .. } => {
                    if let Some(d) = d {
                        claims.extend(d.resources.ports.iter().map(|p| (p.host, n)));
                    }
                }
                _ => {}
            }
        }
        changes.push(Change {
            name: name.to_string(),
            clawid,
            kind,
            reasons,
            nodes,
        });
    }

    // A VM that takes over a host port starts after the VM that held it has stopped.
    for &(port, stop) in &frees {
        for &(p2, start) in &claims {
            if port == p2 && b.graph[stop].clawid() != b.graph[start].clawid() {
                b.edge(stop, start);
            }
        }
    }

    changes.sort_by(|a, b| a.name.cmp(&b.name).then(a.clawid.cmp(&b.clawid)));
    Plan {
        changes,
        graph: b.graph,
    }
}
