//! Shared builders for engine tests: desired instances and observed records from short specs.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use clawfarm::desired::{
    BuildSpec, BundleDesired, BundleKind, DesiredInstance, ResolvedParam, Resources, clawid_for,
};
use clawfarm::driver::Liveness;
use clawfarm::input::clawspec::{Bootstrap, ClawSpec, Image, Param, Params};
use clawfarm::input::manifest::{DesiredState, Port, SourceLoc};
use clawfarm::observe::Observed;
use clawfarm::state::record::{Origin, Phase, ProcessId, RECORD_VERSION, Record, Runtime};
use clawfarm::util::secret::Secret;

pub fn sha(c: char) -> String {
    std::iter::repeat_n(c, 64).collect()
}

pub fn clawspec(with_run: bool) -> ClawSpec {
    let mut image = vec![Image {
        name: "base".into(),
        reference: "https://example.invalid/base.qcow2".into(),
        sha256: sha('b'),
    }];
    if with_run {
        image.push(Image {
            name: "run".into(),
            reference: "clawbox:///run.qcow2".into(),
            sha256: sha('r'),
        });
    }
    ClawSpec {
        schema_version: 3,
        name: "demo".into(),
        image,
        bootstrap: Bootstrap {
            id: "openclaw".into(),
            display_name: None,
            install_script: "true".into(),
            start_script: "true".into(),
            params: Params {
                required: vec![Param {
                    key: "API_KEY".into(),
                    label: "API key".into(),
                    description: None,
                    secret: true,
                    default: None,
                    validator: None,
                }],
                optional: vec![Param {
                    key: "MODEL".into(),
                    label: "Model".into(),
                    description: None,
                    secret: false,
                    default: Some("m1".into()),
                    validator: None,
                }],
            },
        },
        provision: vec![],
    }
}

/// A bundle named by one character (its digest is that character repeated).
pub fn bundle(c: char, imported: bool, with_run: bool) -> Arc<BundleDesired> {
    Arc::new(BundleDesired {
        digest: sha(c),
        source: PathBuf::from(format!("/bundles/{c}.clawbox")),
        kind: BundleKind::TarGz,
        clawspec: Arc::new(clawspec(with_run)),
        imported,
    })
}

/// Desired instance builder.
#[derive(Clone)]
pub struct D {
    pub name: String,
    pub bundle: Arc<BundleDesired>,
    pub key: String,
    pub model: String,
    pub cpus: u32,
    pub ports: Vec<u16>,
    pub state: DesiredState,
}

pub fn d(name: &str) -> D {
    D {
        name: name.into(),
        bundle: bundle('1', true, true),
        key: "secret-1".into(),
        model: "m1".into(),
        cpus: 1,
        ports: vec![],
        state: DesiredState::Running,
    }
}

impl D {
    pub fn bundle(mut self, b: Arc<BundleDesired>) -> Self {
        self.bundle = b;
        self
    }
    pub fn key(mut self, k: &str) -> Self {
        self.key = k.into();
        self
    }
    pub fn model(mut self, m: &str) -> Self {
        self.model = m.into();
        self
    }
    pub fn cpus(mut self, c: u32) -> Self {
        self.cpus = c;
        self
    }
    pub fn port(mut self, p: u16) -> Self {
        self.ports.push(p);
        self
    }
    pub fn stopped(mut self) -> Self {
        self.state = DesiredState::Stopped;
        self
    }
    pub fn suspended(mut self) -> Self {
        self.state = DesiredState::Suspended;
        self
    }
    pub fn build(&self) -> Arc<DesiredInstance> {
        let params = vec![
            ResolvedParam {
                key: "API_KEY".into(),
                value: Secret::new(self.key.clone()),
                secret: true,
                digest: clawfarm::util::digest::keyed_digest(b"test-key", "API_KEY", &self.key),
            },
            ResolvedParam {
                key: "MODEL".into(),
                value: Secret::new(self.model.clone()),
                secret: false,
                digest: clawfarm::util::digest::keyed_digest(b"test-key", "MODEL", &self.model),
            },
        ];
        Arc::new(DesiredInstance {
            name: self.name.clone(),
            clawid: clawid_for(&self.name),
            loc: SourceLoc {
                file: PathBuf::from(format!("/m/{}.yaml", self.name)),
                line: 1,
                col: 1,
            },
            state: self.state,
            build: BuildSpec {
                bundle: self.bundle.digest.clone(),
                params: params
                    .iter()
                    .map(|p| (p.key.clone(), p.digest.clone()))
                    .collect::<BTreeMap<_, _>>(),
                volumes: vec![],
            },
            bundle: self.bundle.clone(),
            resources: self.resources(),
            params,
            volumes: vec![],
        })
    }
    fn resources(&self) -> Resources {
        Resources {
            cpus: self.cpus,
            memory_mib: 1024,
            ports: self
                .ports
                .iter()
                .map(|p| Port {
                    host: *p,
                    guest: *p,
                    name: None,
                })
                .collect(),
            network: Default::default(),
        }
    }

    /// The record an apply of this desired instance leaves behind.
    pub fn record(&self, phase: Phase) -> Record {
        let inst = self.build();
        let t = SystemTime::UNIX_EPOCH;
        Record {
            version: RECORD_VERSION,
            clawid: inst.clawid.clone(),
            name: inst.name.clone(),
            origin: Origin::Manifest,
            manifest: Some(inst.loc.file.clone()),
            desired_state: self.state,
            build: inst.build.clone(),
            resources: inst.resources.clone(),
            phase,
            conditions: vec![],
            runtime: Runtime {
                process: Some(ProcessId {
                    pid: 1,
                    start_time: 1,
                }),
                ..Runtime::default()
            },
            restart_count: 0,
            crash_streak: 0,
            backoff_until: None,
            last_error: None,
            created_at: t,
            updated_at: t,
        }
    }

    pub fn running(&self) -> Observed {
        Observed {
            record: self.record(Phase::Ready),
            live: Liveness::Running(ProcessId {
                pid: 1,
                start_time: 1,
            }),
            suspended: false,
        }
    }
    pub fn exited(&self) -> Observed {
        Observed {
            record: self.record(Phase::Ready),
            live: Liveness::Exited,
            suspended: false,
        }
    }
    pub fn stopped_obs(&self) -> Observed {
        Observed {
            record: self.record(Phase::Stopped),
            live: Liveness::NotStarted,
            suspended: false,
        }
    }
    /// Stopped with a saved suspend state.
    pub fn suspended_obs(&self) -> Observed {
        Observed {
            suspended: true,
            ..self.stopped_obs()
        }
    }
    pub fn creating(&self) -> Observed {
        Observed {
            record: self.record(Phase::Creating),
            live: Liveness::NotStarted,
            suspended: false,
        }
    }
}
