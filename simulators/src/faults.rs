//! Fault injection: what the simulated network does wrong, decided per
//! command before it reaches a switch. Rates are drawn from a seedable RNG so
//! that a test with a seed sees the same faults on every run.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use wfm_protocol::switch::{CommandType, SwitchError, SwitchErrorCode};

/// Delay before a reply: a fixed number of milliseconds, or a distribution.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Latency {
    Fixed(u64),
    Distribution(LatencyDistribution),
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "distribution", rename_all = "snake_case", deny_unknown_fields)]
pub enum LatencyDistribution {
    Uniform {
        min_ms: u64,
        max_ms: u64,
    },
    /// Clamped at zero.
    Normal {
        mean_ms: f64,
        std_dev_ms: f64,
    },
}

impl Default for Latency {
    fn default() -> Self {
        Latency::Fixed(0)
    }
}

impl Latency {
    fn validate(&self) -> Result<(), FaultError> {
        let invalid = |why: &str| Err(FaultError::Latency(why.to_owned()));
        match *self {
            Latency::Distribution(LatencyDistribution::Uniform { min_ms, max_ms })
                if min_ms > max_ms =>
            {
                invalid("uniform latency needs min_ms <= max_ms")
            }
            Latency::Distribution(LatencyDistribution::Normal {
                mean_ms,
                std_dev_ms,
            }) if !(mean_ms.is_finite() && std_dev_ms.is_finite() && std_dev_ms >= 0.0) => {
                invalid("normal latency needs a finite mean and a finite std_dev_ms >= 0")
            }
            _ => Ok(()),
        }
    }

    fn sample(&self, rng: &mut StdRng) -> Duration {
        let ms = match *self {
            Latency::Fixed(ms) => ms,
            Latency::Distribution(LatencyDistribution::Uniform { min_ms, max_ms }) => {
                rng.random_range(min_ms..=max_ms)
            }
            Latency::Distribution(LatencyDistribution::Normal {
                mean_ms,
                std_dev_ms,
            }) => {
                // Box-Muller: one standard normal from two uniforms; 1 - u keeps ln away from 0.
                let (u1, u2): (f64, f64) = (1.0 - rng.random::<f64>(), rng.random());
                let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                (mean_ms + std_dev_ms * z).max(0.0).round() as u64
            }
        };
        Duration::from_millis(ms)
    }
}

/// `5` (fixed), `uniform:MIN:MAX` or `normal:MEAN:STD_DEV`, in milliseconds.
impl FromStr for Latency {
    type Err = FaultError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || {
            FaultError::Latency(format!(
                "`{text}` is not `MS`, `uniform:MIN:MAX` or `normal:MEAN:STD_DEV`"
            ))
        };
        let parts: Vec<&str> = text.split(':').map(str::trim).collect();
        let latency = match parts.as_slice() {
            [ms] => Latency::Fixed(ms.parse().map_err(|_| bad())?),
            ["uniform", min, max] => Latency::Distribution(LatencyDistribution::Uniform {
                min_ms: min.parse().map_err(|_| bad())?,
                max_ms: max.parse().map_err(|_| bad())?,
            }),
            ["normal", mean, std_dev] => Latency::Distribution(LatencyDistribution::Normal {
                mean_ms: mean.parse().map_err(|_| bad())?,
                std_dev_ms: std_dev.parse().map_err(|_| bad())?,
            }),
            _ => return Err(bad()),
        };
        latency.validate()?;
        Ok(latency)
    }
}

/// How a disconnected switch answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DisconnectMode {
    /// The controller answers for it with `SWITCH_UNAVAILABLE`.
    #[default]
    Reply,
    /// Nothing answers: the sender only learns from its timeout.
    Silence,
}

/// The network-wide fault settings: set at start, read and changed through `/faults`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultSettings {
    pub latency_ms: Latency,
    /// Share of commands (0.0–1.0) refused with `error_code`, the switch left unchanged.
    pub error_rate: f64,
    /// Per command type, in place of `error_rate`.
    pub error_rate_by_command: BTreeMap<CommandType, f64>,
    pub error_code: SwitchErrorCode,
    /// Share of commands (0.0–1.0) dropped with no reply and no effect.
    pub silence_rate: f64,
    pub disconnect_mode: DisconnectMode,
}

impl Default for FaultSettings {
    fn default() -> Self {
        Self {
            latency_ms: Latency::default(),
            error_rate: 0.0,
            error_rate_by_command: BTreeMap::new(),
            error_code: SwitchErrorCode::Unknown,
            silence_rate: 0.0,
            disconnect_mode: DisconnectMode::default(),
        }
    }
}

/// A change to [`FaultSettings`]: only the fields given are changed.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultUpdate {
    pub latency_ms: Option<Latency>,
    pub error_rate: Option<f64>,
    pub error_rate_by_command: Option<BTreeMap<CommandType, f64>>,
    pub error_code: Option<SwitchErrorCode>,
    pub silence_rate: Option<f64>,
    pub disconnect_mode: Option<DisconnectMode>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FaultError {
    #[error("{name} must be between 0.0 and 1.0, not {value}")]
    RateOutOfRange { name: String, value: f64 },
    #[error("invalid latency: {0}")]
    Latency(String),
}

impl FaultSettings {
    pub fn validate(&self) -> Result<(), FaultError> {
        self.latency_ms.validate()?;
        let by_command = self.error_rate_by_command.iter().map(|(command, rate)| {
            (
                format!("error_rate_by_command.{}", command_name(*command)),
                *rate,
            )
        });
        let rates = [
            ("error_rate".to_owned(), self.error_rate),
            ("silence_rate".to_owned(), self.silence_rate),
        ];
        match rates
            .into_iter()
            .chain(by_command)
            .find(|(_, rate)| !(0.0..=1.0).contains(rate))
        {
            Some((name, value)) => Err(FaultError::RateOutOfRange { name, value }),
            None => Ok(()),
        }
    }

    /// These settings with `update` applied, if the result is valid.
    pub fn updated(&self, update: FaultUpdate) -> Result<Self, FaultError> {
        let mut next = self.clone();
        next.latency_ms = update.latency_ms.unwrap_or(next.latency_ms);
        next.error_rate = update.error_rate.unwrap_or(next.error_rate);
        if let Some(by_command) = update.error_rate_by_command {
            next.error_rate_by_command = by_command;
        }
        next.error_code = update.error_code.unwrap_or(next.error_code);
        next.silence_rate = update.silence_rate.unwrap_or(next.silence_rate);
        next.disconnect_mode = update.disconnect_mode.unwrap_or(next.disconnect_mode);
        next.validate()?;
        Ok(next)
    }

    fn error_rate_for(&self, command: CommandType) -> f64 {
        self.error_rate_by_command
            .get(&command)
            .copied()
            .unwrap_or(self.error_rate)
    }
}

fn command_name(command: CommandType) -> String {
    serde_json::to_value(command)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// What happens to one command.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// No reply, no effect.
    Silence,
    /// Reply after `delay`: with `fault` and no effect, or else with the switch's own result.
    Reply {
        delay: Duration,
        fault: Option<SwitchError>,
    },
}

/// The live fault state: settings, disconnected switches, one-shot failures.
pub struct Faults {
    settings: FaultSettings,
    disconnected: HashSet<String>,
    fail_next: HashMap<String, (u32, SwitchErrorCode)>,
    rng: StdRng,
}

impl Faults {
    /// With `seed`, the same sequence of commands meets the same faults.
    pub fn new(settings: FaultSettings, seed: Option<u64>) -> Result<Self, FaultError> {
        settings.validate()?;
        Ok(Self {
            settings,
            disconnected: HashSet::new(),
            fail_next: HashMap::new(),
            rng: seed.map_or_else(StdRng::from_os_rng, StdRng::seed_from_u64),
        })
    }

    pub fn settings(&self) -> &FaultSettings {
        &self.settings
    }

    pub fn update(&mut self, update: FaultUpdate) -> Result<&FaultSettings, FaultError> {
        self.settings = self.settings.updated(update)?;
        Ok(&self.settings)
    }

    pub fn set_connected(&mut self, switch_id: &str, connected: bool) {
        if connected {
            self.disconnected.remove(switch_id);
        } else {
            self.disconnected.insert(switch_id.to_owned());
        }
    }

    pub fn is_connected(&self, switch_id: &str) -> bool {
        !self.disconnected.contains(switch_id)
    }

    /// The next `count` commands to `switch_id` fail with `code` (0 clears).
    pub fn fail_next(&mut self, switch_id: &str, count: u32, code: SwitchErrorCode) {
        if count == 0 {
            self.fail_next.remove(switch_id);
        } else {
            self.fail_next.insert(switch_id.to_owned(), (count, code));
        }
    }

    pub fn pending_failures(&self, switch_id: &str) -> u32 {
        self.fail_next.get(switch_id).map_or(0, |(count, _)| *count)
    }

    /// Decides the fate of one command. Disconnection comes first (a switch
    /// that is not there cannot fail on purpose), then one-shot failures (so
    /// that they fail exactly the next N commands), then the random faults.
    pub fn decide(&mut self, switch_id: &str, command: CommandType) -> Decision {
        let fault = if self.disconnected.contains(switch_id) {
            if self.settings.disconnect_mode == DisconnectMode::Silence {
                return Decision::Silence;
            }
            Some(SwitchError::new(
                SwitchErrorCode::SwitchUnavailable,
                format!("switch {switch_id} is disconnected"),
            ))
        } else if let Some((count, code)) = self.fail_next.get_mut(switch_id) {
            let fault = SwitchError::new(*code, "injected failure (fail-next)");
            *count -= 1;
            if *count == 0 {
                self.fail_next.remove(switch_id);
            }
            Some(fault)
        } else if self.rng.random::<f64>() < self.settings.silence_rate {
            return Decision::Silence;
        } else if self.rng.random::<f64>() < self.settings.error_rate_for(command) {
            Some(SwitchError::new(
                self.settings.error_code,
                "injected failure (error rate)",
            ))
        } else {
            None
        };
        Decision::Reply {
            delay: self.settings.latency_ms.sample(&mut self.rng),
            fault,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INSTALL: CommandType = CommandType::InstallRule;

    fn faults(settings: FaultSettings) -> Faults {
        Faults::new(settings, Some(7)).unwrap()
    }

    fn fault_code(decision: &Decision) -> Option<SwitchErrorCode> {
        match decision {
            Decision::Reply { fault, .. } => fault.as_ref().map(|f| f.code),
            Decision::Silence => None,
        }
    }

    #[test]
    fn no_faults_by_default() {
        let mut f = faults(FaultSettings::default());
        for _ in 0..100 {
            assert_eq!(
                f.decide("s", INSTALL),
                Decision::Reply {
                    delay: Duration::ZERO,
                    fault: None
                }
            );
        }
    }

    #[test]
    fn same_seed_same_faults() {
        let settings = FaultSettings {
            error_rate: 0.3,
            silence_rate: 0.2,
            latency_ms: "uniform:0:50".parse().unwrap(),
            ..FaultSettings::default()
        };
        let run = || {
            let mut f = faults(settings.clone());
            (0..200).map(|_| f.decide("s", INSTALL)).collect::<Vec<_>>()
        };
        let first = run();
        assert_eq!(first, run());
        let silent = first.iter().filter(|d| **d == Decision::Silence).count();
        let failed = first.iter().filter(|d| fault_code(d).is_some()).count();
        assert!((20..60).contains(&silent), "{silent}");
        assert!((25..75).contains(&failed), "{failed}");
    }

    #[test]
    fn error_rate_per_command_type_overrides_the_default() {
        let mut f = faults(FaultSettings {
            error_rate: 0.0,
            error_rate_by_command: BTreeMap::from([(CommandType::RemoveRule, 1.0)]),
            error_code: SwitchErrorCode::BadCommand,
            ..FaultSettings::default()
        });
        assert_eq!(fault_code(&f.decide("s", INSTALL)), None);
        assert_eq!(
            fault_code(&f.decide("s", CommandType::RemoveRule)),
            Some(SwitchErrorCode::BadCommand)
        );
    }

    #[test]
    fn disconnect_answers_unavailable_or_nothing() {
        let mut f = faults(FaultSettings::default());
        f.set_connected("s", false);
        assert!(!f.is_connected("s"));
        assert_eq!(
            fault_code(&f.decide("s", INSTALL)),
            Some(SwitchErrorCode::SwitchUnavailable)
        );
        assert_eq!(fault_code(&f.decide("other", INSTALL)), None);
        f.update(FaultUpdate {
            disconnect_mode: Some(DisconnectMode::Silence),
            ..FaultUpdate::default()
        })
        .unwrap();
        assert_eq!(f.decide("s", INSTALL), Decision::Silence);
        f.set_connected("s", true);
        assert_eq!(fault_code(&f.decide("s", INSTALL)), None);
    }

    #[test]
    fn fail_next_fails_exactly_n_commands_of_that_switch() {
        let mut f = faults(FaultSettings::default());
        f.fail_next("s", 2, SwitchErrorCode::BadOutPort);
        assert_eq!(fault_code(&f.decide("t", INSTALL)), None);
        assert_eq!(f.pending_failures("s"), 2);
        for _ in 0..2 {
            assert_eq!(
                fault_code(&f.decide("s", INSTALL)),
                Some(SwitchErrorCode::BadOutPort)
            );
        }
        assert_eq!(fault_code(&f.decide("s", INSTALL)), None);
        assert_eq!(f.pending_failures("s"), 0);
    }

    #[test]
    fn invalid_settings_are_refused_and_leave_the_old_ones() {
        let mut f = faults(FaultSettings::default());
        let refused = f.update(FaultUpdate {
            error_rate: Some(0.5),
            silence_rate: Some(1.5),
            ..FaultUpdate::default()
        });
        assert_eq!(
            refused.unwrap_err(),
            FaultError::RateOutOfRange {
                name: "silence_rate".into(),
                value: 1.5
            }
        );
        assert_eq!(f.settings(), &FaultSettings::default());
        let refused = f.update(FaultUpdate {
            error_rate_by_command: Some(BTreeMap::from([(CommandType::DumpRules, -0.1)])),
            ..FaultUpdate::default()
        });
        assert!(refused
            .unwrap_err()
            .to_string()
            .contains("error_rate_by_command.dump_rules"));
        assert!(Faults::new(
            FaultSettings {
                error_rate: f64::NAN,
                ..FaultSettings::default()
            },
            None
        )
        .is_err());
    }

    #[test]
    fn latency_forms() {
        assert_eq!("5".parse::<Latency>().unwrap(), Latency::Fixed(5));
        assert!("uniform:9:1".parse::<Latency>().is_err());
        assert!("normal:5:-1".parse::<Latency>().is_err());
        assert!("gamma:1:2".parse::<Latency>().is_err());
        let json: Latency =
            serde_json::from_str(r#"{"distribution":"normal","mean_ms":20,"std_dev_ms":5}"#)
                .unwrap();
        assert_eq!(json, "normal:20:5".parse().unwrap());
        assert_eq!(
            serde_json::from_str::<Latency>("7").unwrap(),
            Latency::Fixed(7)
        );

        let mut rng = StdRng::seed_from_u64(1);
        let uniform: Latency = "uniform:10:20".parse().unwrap();
        let normal: Latency = "normal:100:10".parse().unwrap();
        let samples: Vec<u64> = (0..1000)
            .map(|_| normal.sample(&mut rng).as_millis() as u64)
            .collect();
        let mean = samples.iter().sum::<u64>() as f64 / samples.len() as f64;
        assert!((95.0..105.0).contains(&mean), "{mean}");
        for _ in 0..1000 {
            let ms = uniform.sample(&mut rng).as_millis();
            assert!((10..=20).contains(&ms));
        }
    }
}
