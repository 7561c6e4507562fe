//! Validation of one manifest document against the `kind: Claw` format: every problem is a
//! diagnostic at its `FILE:LINE:COL`, with a suggestion for a mistyped key.

#[allow(unused_imports)]
use super::*;
use crate::input::network::{AllowEntry, Egress, Network};

// ---------------------------------------------------------------------------------------
// Validation of one file.

/// What one document declared, for the checks across documents and files.
#[derive(Debug, Clone)]
pub(super) struct Declared {
    pub(super) name: String,
    pub(super) name_loc: SourceLoc,
    pub(super) replicas: u32,
}

/// One file, parsed and validated on its own.
#[derive(Debug, Default, Clone)]
pub(super) struct FileParse {
    /// Valid documents (all of them are dropped later if the file has any problem).
    pub(super) claws: Vec<Claw>,
    /// Names declared by documents that parsed (valid or not).
    pub(super) declared: Vec<Declared>,
    pub(super) diagnostics: Vec<Diagnostic>,
}

pub(super) struct Ctx<'f> {
    file: &'f Path,
    /// Absolute, normalized folder of the file (relative paths are resolved against it).
    dir: PathBuf,
    diags: Vec<Diagnostic>,
}

/// A mapping's entries after the generic checks (keys are strings, no duplicates, no
/// unknown fields), in document order.
pub(super) struct Fields<'n, 'a> {
    entries: Vec<(&'n str, &'n Node<'a>, &'n Node<'a>)>,
}

impl<'n, 'a> Fields<'n, 'a> {
    fn get(&self, name: &str) -> Option<(&'n Node<'a>, &'n Node<'a>)> {
        self.entries
            .iter()
            .find(|(k, _, _)| *k == name)
            .map(|(_, k, v)| (*k, *v))
    }
}

pub(super) fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

/// `path: message`, or just the message at the top level.
pub(super) fn at(path: &str, message: impl fmt::Display) -> String {
    if path.is_empty() {
        message.to_string()
    } else {
        format!("{path}: {message}")
    }
}

impl<'f> Ctx<'f> {
    fn loc(&self, pos: Pos) -> SourceLoc {
        SourceLoc {
            file: self.file.to_path_buf(),
            line: pos.line,
            col: pos.col,
        }
    }

    fn err(&mut self, pos: Pos, message: String) {
        self.diags.push(Diagnostic {
            loc: self.loc(pos),
            message,
        });
    }

    /// Check that `node` is a mapping with string keys, no duplicates and only `allowed`
    /// fields (`allowed` empty = any key).
    fn fields<'n, 'a>(
        &mut self,
        node: &'n Node<'a>,
        path: &str,
        allowed: &[&str],
    ) -> Option<Fields<'n, 'a>> {
        self.fields_quiet(node, path, allowed, true)
    }

    /// [`Self::fields`]; with `echo_keys` false, messages do not repeat unknown or duplicate
    /// keys (used inside param values, which may hold secrets in the wrong place).
    fn fields_quiet<'n, 'a>(
        &mut self,
        node: &'n Node<'a>,
        path: &str,
        allowed: &[&str],
        echo_keys: bool,
    ) -> Option<Fields<'n, 'a>> {
        let Kind::Map(entries) = &node.kind else {
            let message = if path.is_empty() {
                format!(
                    "a manifest document must be a mapping (apiVersion, kind, metadata, spec), found {}",
                    node.describe()
                )
            } else {
                format!("{path}: expected a mapping, found {}", node.describe())
            };
            self.err(node.pos, message);
            return None;
        };
        let mut out = Fields {
            entries: Vec::with_capacity(entries.len()),
        };
        for (k, v) in entries {
            let key = match &k.kind {
                Kind::Scalar { text, .. } => text.as_ref(),
                _ => {
                    self.err(
                        k.pos,
                        at(
                            path,
                            format!("keys must be strings, found {}", k.describe()),
                        ),
                    );
                    continue;
                }
            };
            let shown = || {
                if echo_keys {
                    format!("\"{}\"", clip(key))
                } else {
                    "(not shown)".to_owned()
                }
            };
            if let Some((_, first, _)) = out.entries.iter().find(|(name, _, _)| *name == key) {
                let first = first.pos;
                self.err(
                    k.pos,
                    at(
                        path,
                        format!(
                            "duplicate key {} (first at line {}, column {})",
                            shown(),
                            first.line,
                            first.col
                        ),
                    ),
                );
                continue;
            }
            if !allowed.is_empty() && !allowed.contains(&key) {
                let place = if path.is_empty() {
                    String::new()
                } else {
                    format!(" in {path}")
                };
                let message = match suggest(key, allowed).filter(|_| echo_keys) {
                    Some(s) => format!("unknown field {}{place}; did you mean \"{s}\"?", shown()),
                    None => format!(
                        "unknown field {}{place} (expected one of: {})",
                        shown(),
                        allowed.join(", ")
                    ),
                };
                self.err(k.pos, message);
                continue;
            }
            out.entries.push((key, k, v));
        }
        Some(out)
    }

    fn missing(&mut self, pos: Pos, path: &str, field: &str) {
        self.err(
            pos,
            format!("{}: required field is missing", join(path, field)),
        );
    }

    /// A non-null scalar as a string.
    fn string<'n>(&mut self, node: &'n Node<'_>, path: &str) -> Option<&'n str> {
        match node.scalar() {
            Some(s) => Some(s),
            None => {
                self.err(
                    node.pos,
                    at(
                        path,
                        format!("expected a string, found {}", node.describe()),
                    ),
                );
                None
            }
        }
    }

    /// A plain integer scalar within `range`.
    fn integer(
        &mut self,
        node: &Node<'_>,
        path: &str,
        range: std::ops::RangeInclusive<u64>,
    ) -> Option<u64> {
        let expect = || {
            format!(
                "expected a whole number from {} to {}",
                range.start(),
                range.end()
            )
        };
        let Kind::Scalar { text, plain: true } = &node.kind else {
            self.err(
                node.pos,
                at(path, format!("{}, found {}", expect(), node.describe())),
            );
            return None;
        };
        let text = text.trim();
        let digits = text.strip_prefix('+').unwrap_or(text);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            self.err(
                node.pos,
                at(path, format!("{}, found {}", expect(), node.describe())),
            );
            return None;
        }
        match digits.parse::<u64>() {
            Ok(n) if range.contains(&n) => Some(n),
            _ => {
                self.err(
                    node.pos,
                    at(
                        path,
                        format!(
                            "must be from {} to {}, got {}",
                            range.start(),
                            range.end(),
                            clip(digits)
                        ),
                    ),
                );
                None
            }
        }
    }

    fn resolve(&self, p: &str) -> PathBuf {
        normalize(&self.dir.join(p))
    }
}

pub(super) fn parse_file(file: &Path, text: &str) -> FileParse {
    let dir = std::path::absolute(file)
        .ok()
        .and_then(|a| a.parent().map(normalize))
        .unwrap_or_default();
    let mut ctx = Ctx {
        file,
        dir,
        diags: Vec::new(),
    };
    let mut out = FileParse::default();
    // A `.json` manifest written as JSON is read by the YAML parser (JSON is YAML), but its
    // syntax errors are reported as JSON errors, at JSON's line and column.
    if file
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"))
        && text.trim_start().starts_with(['{', '['])
        && let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(text)
        && e.is_syntax() | e.is_eof()
    {
        let pos = Pos {
            line: e.line().max(1) as u64,
            col: e.column().max(1) as u64,
        };
        let text = crate::input::clawspec::json_error_text(&e);
        ctx.err(pos, format!("invalid JSON: {text}"));
        out.diagnostics = ctx.diags;
        return out;
    }
    let docs = parse_yaml(text);
    for (pos, message) in docs.problems {
        ctx.err(pos, message);
    }
    for doc in &docs.docs {
        let before = ctx.diags.len();
        let (claw, declared) = validate_doc(&mut ctx, doc);
        if let Some(d) = declared {
            out.declared.push(d);
        }
        if let Some(claw) = claw
            && ctx.diags.len() == before
        {
            out.claws.push(claw);
        }
    }
    if let Some((pos, message)) = docs.syntax_error {
        ctx.err(pos, message);
    }
    if docs.docs.is_empty() && ctx.diags.is_empty() {
        // An emptied file (a crashed editor, a truncation) is not a deletion: it protects
        // what it described. Deleting the file is the one way to say "remove".
        ctx.err(
            Pos { line: 1, col: 1 },
            "holds no manifest document; to remove the instances it described, delete the \
             file (with --prune)"
                .into(),
        );
    }
    out.diagnostics = ctx.diags;
    if out.diagnostics.len() > MAX_DIAGNOSTICS_PER_FILE {
        let more = out.diagnostics.len() - MAX_DIAGNOSTICS_PER_FILE;
        out.diagnostics.sort();
        out.diagnostics.truncate(MAX_DIAGNOSTICS_PER_FILE);
        let loc = out.diagnostics[MAX_DIAGNOSTICS_PER_FILE - 1].loc.clone();
        out.diagnostics.push(Diagnostic {
            loc,
            message: format!("… and {more} more problems in this file"),
        });
    }
    out
}

/// At most this many problems are reported per manifest file; the rest are counted.
pub const MAX_DIAGNOSTICS_PER_FILE: usize = 20;

/// A required top-level field that must hold exactly `want` (`apiVersion`, `kind`).
pub(super) fn expect_const(
    ctx: &mut Ctx<'_>,
    top: &Fields<'_, '_>,
    doc: &Node<'_>,
    field: &str,
    want: &str,
) -> bool {
    match top.get(field) {
        None => {
            ctx.missing(doc.pos, "", field);
            false
        }
        Some((_, v)) => match ctx.string(v, field) {
            Some(got) if got == want => true,
            Some(other) => {
                ctx.err(
                    v.pos,
                    format!(
                        "{field}: unsupported {field} \"{}\" (expected \"{want}\")",
                        clip(other)
                    ),
                );
                false
            }
            None => false,
        },
    }
}

pub(super) fn validate_doc(ctx: &mut Ctx<'_>, doc: &Node<'_>) -> (Option<Claw>, Option<Declared>) {
    let Some(top) = ctx.fields(doc, "", TOP_FIELDS) else {
        return (None, None);
    };
    let mut ok = true;
    // apiVersion and kind first: a document of another kind is not checked further.
    ok &= expect_const(ctx, &top, doc, "apiVersion", API_VERSION);
    ok &= expect_const(ctx, &top, doc, "kind", KIND);
    if !ok {
        return (None, None);
    }

    // metadata.name
    let mut name: Option<(String, Pos)> = None;
    match top.get("metadata") {
        None => ctx.missing(doc.pos, "", "metadata"),
        Some((mk, mv)) => {
            if let Some(meta) = ctx.fields(mv, "metadata", METADATA_FIELDS) {
                match meta.get("name") {
                    None => ctx.missing(mk.pos, "metadata", "name"),
                    Some((_, nv)) => {
                        if let Some(n) = ctx.string(nv, "metadata.name") {
                            if is_dns_label(n, MAX_NAME_LEN) {
                                name = Some((n.to_owned(), nv.pos));
                            } else {
                                ctx.err(
                                    nv.pos,
                                    format!(
                                        "metadata.name: \"{}\" is not a valid name: use lowercase letters, digits and '-', starting and ending with a letter or digit, at most {MAX_NAME_LEN} characters",
                                        clip(n)
                                    ),
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    let (spec, replicas) = match top.get("spec") {
        None => {
            ctx.missing(doc.pos, "", "spec");
            (None, 1)
        }
        Some((sk, sv)) => validate_spec(ctx, sk.pos, sv),
    };

    let declared = name.as_ref().map(|(n, pos)| Declared {
        name: n.clone(),
        name_loc: ctx.loc(*pos),
        replicas,
    });
    let claw = match (name, spec) {
        (Some((name, _)), Some(s)) => Some(Claw {
            loc: ctx.loc(doc.pos),
            name,
            clawbox: s.clawbox,
            clawbox_loc: s.clawbox_loc,
            state: s.state,
            replicas: s.replicas,
            cpus: s.cpus,
            memory_mib: s.memory_mib,
            ports: s.ports,
            params: s.params,
            param_locs: s.param_locs,
            volumes: s.volumes,
            network: s.network,
        }),
        _ => None,
    };
    (claw, declared)
}

/// A valid `spec`.
pub(super) struct Spec {
    clawbox: ClawboxRef,
    clawbox_loc: SourceLoc,
    state: DesiredState,
    pub(super) replicas: u32,
    cpus: u32,
    memory_mib: u64,
    ports: Vec<Port>,
    params: BTreeMap<String, ParamSource>,
    param_locs: BTreeMap<String, SourceLoc>,
    volumes: Vec<Volume>,
    network: Network,
}

/// `spec`, validated: `None` when anything in it is wrong (the problems are in `ctx`), and
/// `replicas` (1 unless valid) for the name checks across documents.
pub(super) fn validate_spec(
    ctx: &mut Ctx<'_>,
    key_pos: Pos,
    node: &Node<'_>,
) -> (Option<Spec>, u32) {
    let before = ctx.diags.len();
    let Some(fields) = ctx.fields(node, "spec", SPEC_FIELDS) else {
        return (None, 1);
    };

    let mut clawbox = None;
    let mut clawbox_loc = ctx.loc(key_pos);
    match fields.get("clawbox") {
        None => ctx.missing(key_pos, "spec", "clawbox"),
        Some((_, v)) => {
            clawbox_loc = ctx.loc(v.pos);
            clawbox = validate_clawbox(ctx, v);
        }
    }

    let state = match fields.get("state") {
        None => DesiredState::Running,
        Some((_, v)) => match ctx.string(v, "spec.state") {
            Some("running") => DesiredState::Running,
            Some("stopped") => DesiredState::Stopped,
            Some("suspended") => DesiredState::Suspended,
            Some(other) => {
                ctx.err(
                    v.pos,
                    format!(
                        "spec.state: must be \"running\", \"stopped\" or \"suspended\", got \"{}\"",
                        clip(other)
                    ),
                );
                DesiredState::Running
            }
            None => DesiredState::Running,
        },
    };

    let range = |r: &std::ops::RangeInclusive<u32>| u64::from(*r.start())..=u64::from(*r.end());
    let replicas = match fields.get("replicas") {
        None => 1,
        Some((_, v)) => ctx
            .integer(v, "spec.replicas", range(&REPLICAS_RANGE))
            .map_or(1, |n| n as u32),
    };
    let cpus = match fields.get("cpus") {
        None => DEFAULT_CPUS,
        Some((_, v)) => ctx
            .integer(v, "spec.cpus", range(&CPUS_RANGE))
            .map_or(DEFAULT_CPUS, |n| n as u32),
    };
    let memory_mib = match fields.get("memory") {
        None => DEFAULT_MEMORY_MIB,
        Some((_, v)) => match v.scalar() {
            Some(text) => match parse_memory(text) {
                Ok(m) => m,
                Err(e) => {
                    ctx.err(v.pos, format!("spec.memory: {e}"));
                    DEFAULT_MEMORY_MIB
                }
            },
            None => {
                ctx.err(
                    v.pos,
                    format!(
                        "spec.memory: expected a size such as 2GiB or 512MiB, found {}",
                        v.describe()
                    ),
                );
                DEFAULT_MEMORY_MIB
            }
        },
    };
    let ports = match fields.get("ports") {
        None => Vec::new(),
        Some((_, v)) => validate_ports(ctx, v),
    };
    let (params, param_locs) = match fields.get("params") {
        None => (BTreeMap::new(), BTreeMap::new()),
        Some((_, v)) => validate_params(ctx, v),
    };
    let volumes = match fields.get("volumes") {
        None => Vec::new(),
        Some((_, v)) => validate_volumes(ctx, v),
    };
    let network = match fields.get("network") {
        None => Network::default(),
        Some((_, v)) => validate_network(ctx, v),
    };
    if ctx.diags.len() != before {
        return (None, replicas);
    }
    let Some(clawbox) = clawbox else {
        return (None, replicas);
    };
    let spec = Spec {
        clawbox,
        clawbox_loc,
        state,
        replicas,
        cpus,
        memory_mib,
        ports,
        params,
        param_locs,
        volumes,
        network,
    };
    (Some(spec), replicas)
}

pub(super) fn validate_clawbox(ctx: &mut Ctx<'_>, node: &Node<'_>) -> Option<ClawboxRef> {
    const PATH: &str = "spec.clawbox";
    if let Kind::Map(_) = node.kind {
        let fields = ctx.fields(node, PATH, CLAWBOX_FIELDS)?;
        let url = match fields.get("url") {
            None => {
                ctx.missing(node.pos, PATH, "url");
                None
            }
            Some((_, v)) => ctx.string(v, "spec.clawbox.url").and_then(|u| {
                if is_bundle_url(u) {
                    Some(u.to_owned())
                } else {
                    ctx.err(
                        v.pos,
                        "spec.clawbox.url: must be an http://, https:// or file:// URL".into(),
                    );
                    None
                }
            }),
        };
        let sha256 = match fields.get("sha256") {
            None => {
                ctx.missing(node.pos, PATH, "sha256");
                None
            }
            Some((_, v)) => ctx.string(v, "spec.clawbox.sha256").and_then(|d| {
                if crate::util::digest::is_sha256_hex(d) {
                    Some(d.to_owned())
                } else {
                    ctx.err(
                        v.pos,
                        "spec.clawbox.sha256: must be 64 lowercase hex characters".into(),
                    );
                    None
                }
            }),
        };
        return Some(ClawboxRef::Url {
            url: url?,
            sha256: sha256?,
        });
    }
    let Some(text) = node.scalar() else {
        ctx.err(
            node.pos,
            format!(
                "spec.clawbox: expected a path or {{url: ..., sha256: ...}}, found {}",
                node.describe()
            ),
        );
        return None;
    };
    if text.trim().is_empty() {
        ctx.err(node.pos, "spec.clawbox: must not be empty".into());
        return None;
    }
    if text.contains("://") {
        ctx.err(
            node.pos,
            "spec.clawbox: a URL must be pinned by digest: write {url: ..., sha256: ...}".into(),
        );
        return None;
    }
    Some(ClawboxRef::Path(ctx.resolve(text)))
}

pub(super) fn is_bundle_url(u: &str) -> bool {
    let lower = u.get(..8).unwrap_or(u).to_ascii_lowercase();
    let rest = ["https://", "http://", "file://"]
        .iter()
        .find(|s| lower.starts_with(*s))
        .map(|s| &u[s.len()..]);
    matches!(rest, Some(r) if !r.is_empty())
        && !u.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// A list field: `null` counts as empty.
pub(super) fn list<'n, 'a>(ctx: &mut Ctx<'_>, node: &'n Node<'a>, path: &str) -> &'n [Node<'a>] {
    match &node.kind {
        Kind::Seq(items) => items,
        _ if node.is_null() => &[],
        _ => {
            ctx.err(
                node.pos,
                format!("{path}: expected a list, found {}", node.describe()),
            );
            &[]
        }
    }
}

pub(super) fn validate_ports(ctx: &mut Ctx<'_>, node: &Node<'_>) -> Vec<Port> {
    let mut ports = Vec::new();
    let mut hosts: HashMap<u16, String> = HashMap::new();
    let mut names: HashMap<String, String> = HashMap::new();
    for (i, item) in list(ctx, node, "spec.ports").iter().enumerate() {
        let path = format!("spec.ports[{i}]");
        let Some(fields) = ctx.fields(item, &path, PORT_FIELDS) else {
            continue;
        };
        let host = match fields.get("host") {
            None => {
                ctx.missing(item.pos, &path, "host");
                None
            }
            Some((_, v)) => {
                let p = join(&path, "host");
                match ctx.integer(v, &p, 1..=65535).map(|n| n as u16) {
                    Some(h) if h < MIN_HOST_PORT => {
                        ctx.err(
                            v.pos,
                            format!(
                                "{p}: host port {h} is privileged; use a port from {MIN_HOST_PORT} to 65535"
                            ),
                        );
                        None
                    }
                    Some(h) => {
                        if let Some(first) = hosts.get(&h) {
                            ctx.err(
                                v.pos,
                                format!("{p}: host port {h} is already used by {first}"),
                            );
                        } else {
                            hosts.insert(h, path.clone());
                        }
                        Some(h)
                    }
                    None => None,
                }
            }
        };
        let guest = match fields.get("guest") {
            None => {
                ctx.missing(item.pos, &path, "guest");
                None
            }
            Some((_, v)) => ctx
                .integer(v, &join(&path, "guest"), 1..=65535)
                .map(|n| n as u16),
        };
        let name = match fields.get("name") {
            None => None,
            Some((_, v)) => {
                let p = join(&path, "name");
                ctx.string(v, &p).and_then(|n| {
                    if !is_dns_label(n, MAX_LABEL_LEN) {
                        ctx.err(v.pos, format!("{p}: \"{}\" is not a valid port name: use lowercase letters, digits and '-', at most {MAX_LABEL_LEN} characters", clip(n)));
                        None
                    } else if let Some(first) = names.get(n) {
                        ctx.err(v.pos, format!("{p}: duplicate port name \"{n}\" (already used by {first})"));
                        None
                    } else {
                        names.insert(n.to_owned(), path.clone());
                        Some(n.to_owned())
                    }
                })
            }
        };
        if let (Some(host), Some(guest)) = (host, guest) {
            ports.push(Port { host, guest, name });
        }
    }
    ports
}

/// `spec.network`: a word (`none`, `allow`, `open`) or `{egress, allow: [entries]}`.
pub(super) fn validate_network(ctx: &mut Ctx<'_>, node: &Node<'_>) -> Network {
    const PATH: &str = "spec.network";
    let mut net = Network::default();
    let egress_of = |ctx: &mut Ctx<'_>, v: &Node<'_>, path: &str| -> Option<Egress> {
        let word = ctx.string(v, path)?;
        let e = Egress::parse(word);
        if e.is_none() {
            ctx.err(
                v.pos,
                format!(
                    "{path}: unknown policy \"{}\": use none, allow or open",
                    clip(word)
                ),
            );
        }
        e
    };
    if node.scalar().is_some() {
        if let Some(e) = egress_of(ctx, node, PATH) {
            net.egress = e;
            if e == Egress::Allow {
                ctx.err(
                    node.pos,
                    format!("{PATH}: policy allow needs a list: {{egress: allow, allow: [host, host:port]}}"),
                );
            }
        }
        return net;
    }
    let Some(fields) = ctx.fields(node, PATH, NETWORK_FIELDS) else {
        return net;
    };
    let egress_path = join(PATH, "egress");
    match fields.get("egress") {
        None => ctx.missing(node.pos, PATH, "egress"),
        Some((_, v)) => {
            if let Some(e) = egress_of(ctx, v, &egress_path) {
                net.egress = e;
            }
        }
    }
    let allow_path = join(PATH, "allow");
    let mut listed = 0;
    if let Some((k, v)) = fields.get("allow") {
        let mut seen: HashMap<String, String> = HashMap::new();
        let items = list(ctx, v, &allow_path);
        listed = items.len();
        for (i, item) in items.iter().enumerate() {
            let p = format!("{allow_path}[{i}]");
            let Some(text) = ctx.string(item, &p) else {
                continue;
            };
            match AllowEntry::parse(text) {
                Ok(e) => {
                    let key = e.to_string();
                    if let Some(first) = seen.get(&key) {
                        ctx.err(
                            item.pos,
                            format!("{p}: \"{key}\" is already listed at {first}"),
                        );
                    } else {
                        seen.insert(key, p.clone());
                        net.allow.push(e);
                    }
                }
                Err(e) => ctx.err(item.pos, format!("{p}: {e}")),
            }
        }
        if net.egress == Egress::None && !net.allow.is_empty() && fields.get("egress").is_some() {
            ctx.err(
                k.pos,
                format!("{allow_path}: an allow list needs egress allow or open (egress is none)"),
            );
        }
    }
    if net.egress == Egress::Allow && listed == 0 && fields.get("egress").is_some() {
        let pos = fields.get("allow").map_or(node.pos, |(_, v)| v.pos);
        ctx.err(
            pos,
            format!(
                "{allow_path}: policy allow needs at least one entry (host, host:port or *.suffix)"
            ),
        );
    }
    net
}

pub(super) type Params = (BTreeMap<String, ParamSource>, BTreeMap<String, SourceLoc>);

pub(super) fn validate_params(ctx: &mut Ctx<'_>, node: &Node<'_>) -> Params {
    let mut params = BTreeMap::new();
    let mut locs = BTreeMap::new();
    if node.is_null() {
        return (params, locs);
    }
    let Some(fields) = ctx.fields(node, "spec.params", &[]) else {
        return (params, locs);
    };
    for (key, k, v) in fields.entries {
        if !crate::input::clawspec::is_env_key(key) {
            ctx.err(
                k.pos,
                format!(
                    "spec.params: invalid key \"{}\": must match [A-Za-z_][A-Za-z0-9_]*",
                    clip(key)
                ),
            );
            continue;
        }
        let path = format!("spec.params.{key}");
        let source = match &v.kind {
            Kind::Scalar { text, .. } if !v.is_null() => {
                Some(ParamSource::Literal(text.clone().into_owned()))
            }
            Kind::Scalar { .. } => {
                ctx.err(
                    k.pos,
                    format!("{path}: has no value (write \"\" for an empty string)"),
                );
                None
            }
            Kind::Seq(_) => {
                ctx.err(
                    v.pos,
                    format!(
                        "{path}: expected a value, {{env: NAME}} or {{file: PATH}}, found a list"
                    ),
                );
                None
            }
            Kind::Map(_) => param_reference(ctx, v, &path),
        };
        if let Some(source) = source {
            params.insert(key.to_owned(), source);
            locs.insert(key.to_owned(), ctx.loc(k.pos));
        }
    }
    (params, locs)
}

pub(super) fn param_reference(
    ctx: &mut Ctx<'_>,
    node: &Node<'_>,
    path: &str,
) -> Option<ParamSource> {
    let fields = ctx.fields_quiet(node, path, PARAM_REF_FIELDS, false)?;
    match (fields.get("env"), fields.get("file")) {
        (Some(_), Some((fk, _))) => {
            ctx.err(fk.pos, format!("{path}: use either env or file, not both"));
            None
        }
        (None, None) => {
            ctx.err(
                node.pos,
                format!("{path}: expected {{env: NAME}} or {{file: PATH}}"),
            );
            None
        }
        (Some((_, v)), None) => {
            let p = join(path, "env");
            let name = ctx.string(v, &p)?;
            if crate::input::clawspec::is_env_key(name) {
                Some(ParamSource::Env(name.to_owned()))
            } else {
                ctx.err(
                    v.pos,
                    format!("{p}: \"{}\" is not a valid environment variable name (must match [A-Za-z_][A-Za-z0-9_]*)", clip(name)),
                );
                None
            }
        }
        (None, Some((_, v))) => {
            let p = join(path, "file");
            let file = ctx.string(v, &p)?;
            if file.trim().is_empty() {
                ctx.err(v.pos, format!("{p}: must not be empty"));
                None
            } else {
                Some(ParamSource::File(ctx.resolve(file)))
            }
        }
    }
}

pub(super) fn validate_volumes(ctx: &mut Ctx<'_>, node: &Node<'_>) -> Vec<Volume> {
    let mut volumes = Vec::new();
    let mut names: HashMap<String, String> = HashMap::new();
    let mut paths: HashMap<String, String> = HashMap::new();
    for (i, item) in list(ctx, node, "spec.volumes").iter().enumerate() {
        let path = format!("spec.volumes[{i}]");
        let Some(fields) = ctx.fields(item, &path, VOLUME_FIELDS) else {
            continue;
        };
        let name = match fields.get("name") {
            None => {
                ctx.missing(item.pos, &path, "name");
                None
            }
            Some((_, v)) => {
                let p = join(&path, "name");
                ctx.string(v, &p).and_then(|n| {
                    if !is_dns_label(n, MAX_LABEL_LEN) {
                        ctx.err(v.pos, format!("{p}: \"{}\" is not a valid volume name: use lowercase letters, digits and '-', starting and ending with a letter or digit, at most {MAX_LABEL_LEN} characters", clip(n)));
                        None
                    } else if let Some(first) = names.get(n) {
                        ctx.err(v.pos, format!("{p}: duplicate volume name \"{n}\" (already used by {first})"));
                        None
                    } else {
                        names.insert(n.to_owned(), path.clone());
                        Some(n.to_owned())
                    }
                })
            }
        };
        let guest_path = match fields.get("guestPath") {
            None => {
                ctx.missing(item.pos, &path, "guestPath");
                None
            }
            Some((_, v)) => {
                let p = join(&path, "guestPath");
                ctx.string(v, &p)
                    .and_then(|g| match normalize_guest_path(g) {
                        Err(why) => {
                            ctx.err(v.pos, format!("{p}: {why}"));
                            None
                        }
                        Ok(g) => {
                            if let Some(first) = paths.get(&g) {
                                ctx.err(
                                    v.pos,
                                    format!("{p}: \"{g}\" is already mounted by {first}"),
                                );
                                None
                            } else {
                                paths.insert(g.clone(), path.clone());
                                Some(g)
                            }
                        }
                    })
            }
        };
        if let (Some(name), Some(guest_path)) = (name, guest_path) {
            volumes.push(Volume { name, guest_path });
        }
    }
    volumes
}

/// An absolute guest path without `..`, not `/`, without blanks or control characters;
/// returned with `.` segments, repeated and trailing slashes removed.
pub(super) fn normalize_guest_path(g: &str) -> Result<String, String> {
    if !g.starts_with('/') {
        return Err("must be an absolute path (starting with /)".into());
    }
    if g.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain spaces or control characters".into());
    }
    let mut out = String::with_capacity(g.len());
    for seg in g.split('/') {
        match seg {
            "" | "." => {}
            ".." => return Err("must not contain \"..\"".into()),
            s => {
                out.push('/');
                out.push_str(s);
            }
        }
    }
    if out.is_empty() {
        return Err("must not be the root folder /".into());
    }
    if let Some((reserved, why)) = RESERVED_GUEST_PATHS
        .iter()
        .find(|(r, _)| is_within(&out, r) || is_within(r, &out))
    {
        return Err(if out == *reserved {
            format!("\"{out}\" is reserved: {why}")
        } else if is_within(&out, reserved) {
            format!("\"{out}\" lies inside {reserved}, which is reserved: {why}")
        } else {
            format!("\"{out}\" would hide {reserved}, which is reserved: {why}")
        });
    }
    Ok(out)
}

/// Guest folders a volume may not be mounted on, inside or above, with the reason.
///
/// A volume there would hide or replace the guest's system files, the payload, or state that
/// cloud-init and the clawfarm runner need to boot the instance and let `ssh` in.
pub const RESERVED_GUEST_PATHS: &[(&str, &str)] = &[
    ("/etc", "the guest's system configuration"),
    ("/usr", "the guest's system files"),
    ("/bin", "the guest's system files"),
    ("/sbin", "the guest's system files"),
    ("/lib", "the guest's system files"),
    ("/lib32", "the guest's system files"),
    ("/lib64", "the guest's system files"),
    ("/libx32", "the guest's system files"),
    ("/boot", "the guest's kernel and bootloader"),
    ("/dev", "a kernel file system"),
    ("/proc", "a kernel file system"),
    ("/sys", "a kernel file system"),
    ("/run", "a runtime file system"),
    ("/var/lib/cloud", "cloud-init's state"),
    ("/var/lib/clawfarm", "the clawfarm runner's state"),
    ("/opt/claw", "the bundle's payload is mounted there"),
    ("/home/claw/.ssh", "the claw user's SSH keys"),
];

/// Whether `path` is `base` or lies below it (both normalized, absolute).
fn is_within(path: &str, base: &str) -> bool {
    path == base || (path.starts_with(base) && path.as_bytes().get(base.len()) == Some(&b'/'))
}

/// Parse a memory size into MiB and check it is within [`MEMORY_MIB_RANGE`].
///
/// Accepted: a plain number of MiB (`2048`), or a number with a unit `MiB`/`Mi`/`M` or
/// `GiB`/`Gi`/`G` (all binary: 1 GiB = 1024 MiB), optionally with a decimal fraction and a
/// space before the unit (`512MiB`, `2GiB`, `1.5 GiB`). The result must be a whole number of
/// MiB. The error message says what was expected.
pub fn parse_memory(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let bad = || {
        format!(
            "invalid memory size \"{}\": use a number of MiB (e.g. 2048) or a size such as 512MiB, 2GiB or 1.5GiB",
            clip(s)
        )
    };
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let mult: u128 = match unit.trim_start() {
        "" | "M" | "Mi" | "MiB" => 1,
        "G" | "Gi" | "GiB" => 1024,
        _ => return Err(bad()),
    };
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if int.is_empty() && frac.is_empty()
        || int.len() > 12
        || frac.len() > 9
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || number.ends_with('.')
    {
        return Err(bad());
    }
    let scale = 10u128.pow(frac.len() as u32);
    let int_v: u128 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| bad())?
    };
    let frac_v: u128 = if frac.is_empty() {
        0
    } else {
        frac.parse().map_err(|_| bad())?
    };
    let scaled = (int_v * scale + frac_v) * mult;
    if !scaled.is_multiple_of(scale) {
        return Err(format!(
            "memory size \"{}\" is not a whole number of MiB",
            clip(s)
        ));
    }
    let mib = scaled / scale;
    let (lo, hi) = (*MEMORY_MIB_RANGE.start(), *MEMORY_MIB_RANGE.end());
    if mib < u128::from(lo) || mib > u128::from(hi) {
        return Err(format!(
            "memory must be from {lo} MiB to {hi} MiB ({} GiB), got {mib} MiB",
            hi / 1024
        ));
    }
    Ok(mib as u64)
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most `max` characters.
/// True when `s` is a DNS label (`[a-z0-9]([-a-z0-9]*[a-z0-9])?`) of at most `max` chars.
pub fn is_dns_label(s: &str, max: usize) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= max
        && b.iter()
            .all(|c| matches!(c, b'a'..=b'z' | b'0'..=b'9' | b'-'))
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// The allowed field closest to an unknown `key`, if it is close enough to be a typo.
pub(super) fn suggest<'s>(key: &str, allowed: &[&'s str]) -> Option<&'s str> {
    let lower = key.to_ascii_lowercase();
    allowed
        .iter()
        .map(|a| (strsim::levenshtein(&lower, &a.to_ascii_lowercase()), *a))
        .filter(|(d, a)| *d == 0 || (*d <= 2 && a.len() > 3 && key.len() > 2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, a)| a)
}

/// A user string for a message: at most 64 characters, control characters escaped.
pub(super) fn clip(s: &str) -> String {
    const MAX: usize = 64;
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == MAX {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Lexically normalize a path: drop `.`, resolve `..` against what precedes it (never above
/// the root), without touching the file system (symlinks are not resolved).
pub(super) fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if matches!(out.components().next_back(), Some(Component::Normal(_))) {
                    out.pop();
                } else if !out.has_root() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}
