//! Where elmroute learns the device's battery, heat and network.
//!
//! - [`ManualDevice`]: the host app pushes state in, the way an iOS app forwards
//!   `ProcessInfo.thermalState` or an Android app its `PowerManager` status.
//! - [`SysfsDevice`]: reads Linux's `/sys/class/power_supply`, `/sys/class/thermal` and
//!   `/sys/class/net` under a configurable root, so tests run it on a fake tree.
//! - [`SystemDevice`]: the best reader for this host (sysfs on Linux, a neutral state elsewhere).
//!
//! ```
//! use elmroute_core::{Battery, DeviceSource, DeviceState, ThermalLevel};
//! use elmroute_device::ManualDevice;
//!
//! let device = ManualDevice::new(DeviceState::default());
//! let shared = device.clone(); // hand one clone to the router, keep one in the app
//! shared.update(|s| {
//!     s.battery = Some(Battery { level: 0.12, charging: false });
//!     s.thermal = ThermalLevel::Serious;
//! });
//! assert_eq!(device.state().thermal, ThermalLevel::Serious);
//! ```
#![deny(missing_docs)]

mod manual;
mod sysfs;

pub use elmroute_core::{Battery, DeviceSource, DeviceState, Network, ThermalLevel};
pub use manual::ManualDevice;
pub use sysfs::{SysfsDevice, ThermalThresholds};

/// The device reader that fits this host: [`SysfsDevice`] on Linux, otherwise a source that
/// always reports a neutral state (mains power, nominal heat, online) until a host pushes
/// better data through a [`ManualDevice`].
#[derive(Debug)]
pub struct SystemDevice {
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    Sysfs(SysfsDevice),
    #[cfg_attr(target_os = "linux", allow(dead_code))]
    Neutral,
}

impl SystemDevice {
    /// The reader for this host.
    pub fn new() -> Self {
        #[cfg(target_os = "linux")]
        let inner = Inner::Sysfs(SysfsDevice::new("/"));
        #[cfg(not(target_os = "linux"))]
        let inner = Inner::Neutral;
        Self { inner }
    }
}

impl Default for SystemDevice {
    fn default() -> Self {
        Self::new()
    }
}

impl DeviceSource for SystemDevice {
    fn state(&self) -> DeviceState {
        match &self.inner {
            Inner::Sysfs(s) => s.state(),
            Inner::Neutral => DeviceState::default(),
        }
    }
}
