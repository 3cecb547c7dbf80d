use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use elmroute_core::{Battery, DeviceSource, DeviceState, Network, ThermalLevel};

/// Temperatures (°C) that map a thermal zone onto a [`ThermalLevel`] when the zone publishes
/// no trip points of its own.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThermalThresholds {
    /// At or above: fair.
    pub fair: f32,
    /// At or above: serious.
    pub serious: f32,
    /// At or above: critical.
    pub critical: f32,
}

impl Default for ThermalThresholds {
    fn default() -> Self {
        Self {
            fair: 70.0,
            serious: 85.0,
            critical: 95.0,
        }
    }
}

/// Reads battery, thermal and network state from Linux's sysfs.
///
/// Everything is read under a root directory (`/` on a real system) so tests can point it at
/// a fake tree. Missing or unreadable files are not errors: a desktop has no battery, a VM
/// has no thermal zones. Such parts read as mains power, nominal heat and online.
///
/// - Battery: `class/power_supply/*` with `type` = `Battery`, except peripherals (`scope` =
///   `Device`); several system batteries are combined by energy (`energy_*`/`charge_*`) or
///   their `capacity` percentages; charging when a status is `Charging` or `Full`, or a
///   `Mains`/`USB` supply reports `online` = 1.
/// - Low power: `firmware/acpi/platform_profile` = `low-power`.
/// - Thermal: the hottest `class/thermal/thermal_zone*`. A zone's `critical` trip point
///   (minus 5 °C) marks critical, `hot` marks serious and `passive` marks fair; zones without
///   trip points use [`ThermalThresholds`].
/// - Network: `class/net/*/operstate` of hardware interfaces (those with a `device` link, so
///   not bridges, veths or tunnels): online when one is `up`, metered when the only ones up
///   are cellular or tethered (`wwan*`, `rmnet*`, `ccmni*`, `usb*`, `enx*`), offline when
///   none is.
///
/// Reads are cached for a short while (one second by default) because the router asks on
/// every request.
#[derive(Debug)]
pub struct SysfsDevice {
    root: PathBuf,
    thresholds: ThermalThresholds,
    max_age: Duration,
    cache: Mutex<Option<(Instant, DeviceState)>>,
}

impl SysfsDevice {
    /// A reader rooted at `root` (`/` on a real system).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            thresholds: ThermalThresholds::default(),
            max_age: Duration::from_secs(1),
            cache: Mutex::new(None),
        }
    }

    /// Sets the temperatures used for zones without trip points.
    #[must_use]
    pub fn with_thresholds(mut self, thresholds: ThermalThresholds) -> Self {
        self.thresholds = thresholds;
        self
    }

    /// Sets how long a reading is reused (zero reads on every call).
    #[must_use]
    pub fn with_max_age(mut self, max_age: Duration) -> Self {
        self.max_age = max_age;
        self
    }

    /// Reads the tree now, bypassing the cache.
    pub fn read(&self) -> DeviceState {
        let sys = self.root.join("sys");
        let (battery, mains_online) = read_power(&sys.join("class/power_supply"));
        let battery = battery.map(|mut b| {
            b.charging |= mains_online;
            b
        });
        let low_power = read_trimmed(&sys.join("firmware/acpi/platform_profile"))
            .is_some_and(|p| p == "low-power");
        DeviceState {
            battery,
            low_power,
            thermal: read_thermal(&sys.join("class/thermal"), self.thresholds),
            network: read_network(&sys.join("class/net")),
        }
    }
}

impl DeviceSource for SysfsDevice {
    fn state(&self) -> DeviceState {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, state)) = *cache
            && at.elapsed() < self.max_age
        {
            return state;
        }
        let state = self.read();
        tracing::debug!(?state, "read device state from sysfs");
        *cache = Some((Instant::now(), state));
        state
    }
}

fn read_trimmed(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

fn read_number(path: &Path) -> Option<f64> {
    read_trimmed(path)?.parse().ok()
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    out.sort();
    out
}

/// The system battery (several are combined, weighted by capacity when the kernel reports
/// energy or charge), and whether any external supply is online. Peripheral batteries
/// (`scope` = `Device`: mice, headsets) are ignored.
fn read_power(dir: &Path) -> (Option<Battery>, bool) {
    let mut now_total = 0.0f64;
    let mut full_total = 0.0f64;
    let mut percents: Vec<f64> = Vec::new();
    let mut charging = false;
    let mut mains = false;
    for supply in entries(dir) {
        match read_trimmed(&supply.join("type")).as_deref() {
            Some("Battery") => {
                if read_trimmed(&supply.join("scope")).as_deref() == Some("Device") {
                    continue;
                }
                // Batteries without a capacity (some peripherals without a scope) are skipped.
                let Some(capacity) = read_number(&supply.join("capacity")) else {
                    continue;
                };
                let status = read_trimmed(&supply.join("status")).unwrap_or_default();
                charging |= matches!(status.as_str(), "Charging" | "Full");
                let pair = |now: &str, full: &str| {
                    read_number(&supply.join(now)).zip(read_number(&supply.join(full)))
                };
                match pair("energy_now", "energy_full")
                    .or_else(|| pair("charge_now", "charge_full"))
                {
                    Some((now, full)) if full > 0.0 => {
                        now_total += now.max(0.0);
                        full_total += full;
                    }
                    _ => percents.push(capacity),
                }
            }
            Some("Mains") | Some("USB") | Some("USB_PD") | Some("USB_C") => {
                mains |= read_number(&supply.join("online")).is_some_and(|v| v >= 1.0);
            }
            _ => {}
        }
    }
    let level = if full_total > 0.0 && percents.is_empty() {
        Some(now_total / full_total)
    } else if !percents.is_empty() {
        // Mixed or percent-only reports: average the percentages, counting energy-reporting
        // batteries by their own percentage.
        let mut all = percents.clone();
        if full_total > 0.0 {
            all.push(now_total / full_total * 100.0);
        }
        Some(all.iter().sum::<f64>() / all.len() as f64 / 100.0)
    } else {
        None
    };
    let battery = level.map(|l| Battery {
        level: l.clamp(0.0, 1.0) as f32,
        charging,
    });
    (battery, mains)
}

fn read_thermal(dir: &Path, thresholds: ThermalThresholds) -> ThermalLevel {
    let mut worst = ThermalLevel::Nominal;
    for zone in entries(dir) {
        let is_zone = zone
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("thermal_zone"));
        if !is_zone {
            continue;
        }
        let Some(milli) = read_number(&zone.join("temp")) else {
            continue;
        };
        let temp = (milli / 1000.0) as f32;
        worst = worst.max(zone_level(&zone, temp, thresholds));
    }
    worst
}

fn zone_level(zone: &Path, temp: f32, thresholds: ThermalThresholds) -> ThermalLevel {
    let mut trips: Vec<(String, f32)> = Vec::new();
    for i in 0..32 {
        let Some(kind) = read_trimmed(&zone.join(format!("trip_point_{i}_type"))) else {
            break;
        };
        if let Some(t) = read_number(&zone.join(format!("trip_point_{i}_temp"))) {
            // Some firmware publishes zero or negative placeholders; ignore them.
            if t > 0.0 {
                trips.push((kind, (t / 1000.0) as f32));
            }
        }
    }
    let trip = |name: &str| {
        trips
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, t)| *t)
            .fold(None, |acc: Option<f32>, t| {
                Some(acc.map_or(t, |a| a.min(t)))
            })
    };
    let (fair, serious, critical) = match (trip("passive"), trip("hot"), trip("critical")) {
        (None, None, None) => (thresholds.fair, thresholds.serious, thresholds.critical),
        (p, h, c) => {
            // The kernel shuts down at the critical trip; call it critical a little before.
            let critical = c.map_or(thresholds.critical, |c| c - 5.0);
            let serious = h.unwrap_or(thresholds.serious).min(critical);
            let fair = p.unwrap_or(thresholds.fair).min(serious);
            (fair, serious, critical)
        }
    };
    if temp >= critical {
        ThermalLevel::Critical
    } else if temp >= serious {
        ThermalLevel::Serious
    } else if temp >= fair {
        ThermalLevel::Fair
    } else {
        ThermalLevel::Nominal
    }
}

fn read_network(dir: &Path) -> Network {
    let ifaces = entries(dir);
    if ifaces.is_empty() {
        // No sysfs network view (containers, other OSes): assume online and let the remote
        // backend's own errors say otherwise.
        return Network::Online;
    }
    let mut any_up = false;
    let mut unmetered_up = false;
    for iface in ifaces {
        let Some(name) = iface
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_owned)
        else {
            continue;
        };
        // Only hardware links reach the internet by themselves: bridges, veths, docker0,
        // VPN tunnels and loopback have no `device` link and would otherwise read as online.
        if name == "lo" || !iface.join("device").exists() {
            continue;
        }
        let state = read_trimmed(&iface.join("operstate")).unwrap_or_default();
        // Some drivers report `unknown` while working; trust the carrier then.
        let up = state == "up"
            || (state == "unknown" && read_number(&iface.join("carrier")) == Some(1.0));
        if up {
            any_up = true;
            // Cellular modems and phone tethering cost the user per byte.
            let cellular = ["wwan", "rmnet", "ccmni", "usb", "enx"]
                .iter()
                .any(|p| name.starts_with(p));
            if !cellular {
                unmetered_up = true;
            }
        }
    }
    match (any_up, unmetered_up) {
        (false, _) => Network::Offline,
        (true, false) => Network::Metered,
        (true, true) => Network::Online,
    }
}
