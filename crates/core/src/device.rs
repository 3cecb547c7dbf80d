//! The state of the device the app runs on, and the trait that reports it.

use serde::{Deserialize, Serialize};

/// How hot the device is, in the four levels that Apple's `ProcessInfo.thermalState` and
/// Android's thermal status both map onto.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum ThermalLevel {
    /// Cool: no limits.
    #[default]
    Nominal,
    /// Warm: heavy work still fine.
    Fair,
    /// Hot: the OS is throttling; heavy local work makes it worse.
    Serious,
    /// About to shut work down: elmroute never runs the local model here.
    Critical,
}

impl ThermalLevel {
    /// The level's name as written in policies and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            ThermalLevel::Nominal => "nominal",
            ThermalLevel::Fair => "fair",
            ThermalLevel::Serious => "serious",
            ThermalLevel::Critical => "critical",
        }
    }
}

impl std::fmt::Display for ThermalLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ThermalLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "nominal" => Ok(ThermalLevel::Nominal),
            "fair" => Ok(ThermalLevel::Fair),
            "serious" => Ok(ThermalLevel::Serious),
            "critical" => Ok(ThermalLevel::Critical),
            other => Err(format!(
                "unknown thermal level `{other}`: expected nominal, fair, serious or critical"
            )),
        }
    }
}

/// The battery, when the device has one.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Battery {
    /// Charge, 0.0 (empty) to 1.0 (full). A value above 1 and up to 100 is read as a
    /// percentage.
    pub level: f32,
    /// Whether it is connected to power.
    pub charging: bool,
}

/// Whether the network can reach a cloud provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// Connected and not metered.
    #[default]
    Online,
    /// Connected over a metered link (cellular, tethering): the cloud costs the user.
    Metered,
    /// No connection: the cloud is out of reach.
    Offline,
}

/// A snapshot of the device.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct DeviceState {
    /// The battery, or `None` on mains-powered devices.
    pub battery: Option<Battery>,
    /// The OS's low-power / battery-saver mode.
    pub low_power: bool,
    /// The thermal level.
    pub thermal: ThermalLevel,
    /// The network.
    pub network: Network,
}

/// Something that reports the device's state: a sysfs reader, a host app pushing values in,
/// or a fixed state in tests.
///
/// It is called once per request on the request's task, so it must be cheap: readers that
/// touch the file system should cache for a short while.
pub trait DeviceSource: Send + Sync {
    /// The state now.
    fn state(&self) -> DeviceState;
}

/// A fixed state is its own source: handy in tests and for hosts that rebuild the router.
impl DeviceSource for DeviceState {
    fn state(&self) -> DeviceState {
        *self
    }
}

impl<T: DeviceSource + ?Sized> DeviceSource for std::sync::Arc<T> {
    fn state(&self) -> DeviceState {
        (**self).state()
    }
}
