//! `wfm worker`: the worker spokes (resource manager, speaker worker, or
//! both) in a process of their own, sharing the work with other instances
//! through their consumer groups.

use clap::{Args, ValueEnum};
use wfm_runtime::Service;

use super::system::{run_alone, Components};
use crate::config::Config;

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Which spoke to run.
    #[arg(long, value_enum, default_value = "all")]
    pub role: Role,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    Resources,
    Speaker,
    All,
}

pub async fn run(config: Config, args: WorkerArgs) -> anyhow::Result<()> {
    run_alone(config, |components, config, service| {
        spawn(components, config, service, args.role);
    })
    .await
}

/// Adds the spokes of `role` to `components`; `wfm up` uses it with [`Role::All`].
pub fn spawn(
    components: &mut Components,
    config: &Config,
    service: &Service,
    role: Role,
) -> Option<wfm_workers::SpeakerStats> {
    if matches!(role, Role::Resources | Role::All) {
        let (service, resources) = (service.clone(), config.resources.clone());
        components.spawn(async move {
            let result = wfm_workers::run_resources(service, resources).await;
            ("resources", result)
        });
    }
    if !matches!(role, Role::Speaker | Role::All) {
        return None;
    }
    let speaker = wfm_workers::Speaker::new(config.speaker.clone());
    let stats = speaker.stats();
    let service = service.clone();
    components.spawn(async move { ("speaker", speaker.run(service).await) });
    Some(stats)
}
