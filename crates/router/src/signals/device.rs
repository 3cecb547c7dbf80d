//! Battery, thermal and network signals from a [`DeviceState`] under a [`Policy`].

use elmroute_core::{Battery, DeviceState, Network, ThermalLevel};

use crate::policy::Policy;

/// The battery's charge as a fraction. Hosts sometimes pass a percentage (`15.0`): values
/// above 1 and up to 100 are read as percent; NaN reads as full (no evidence of a low
/// battery).
pub fn level(b: &Battery) -> f32 {
    if b.level.is_nan() {
        1.0
    } else if b.level > 1.0 && b.level <= 100.0 {
        b.level / 100.0
    } else {
        b.level.clamp(0.0, 1.0)
    }
}

/// Battery pressure, 0..=1: 0 on mains or charging or above `low`; from 0.5 at `low` rising
/// to 1.0 at `critical`; at least `low_power` while low-power mode is on.
pub fn battery(state: &DeviceState, policy: &Policy) -> f32 {
    let low_power = if state.low_power {
        policy.battery.low_power.get()
    } else {
        0.0
    };
    let Some(b) = state.battery.filter(|b| !b.charging) else {
        return low_power;
    };
    let low = policy.battery.low.get();
    let critical = policy.battery.critical.get();
    let level = level(&b);
    let pressure = if level <= critical {
        1.0
    } else if level <= low {
        let span = (low - critical).max(f32::EPSILON);
        0.5 + 0.5 * (low - level) / span
    } else {
        0.0
    };
    pressure.max(low_power)
}

/// Whether the battery is at or below the critical level and not charging.
pub fn battery_critical(state: &DeviceState, policy: &Policy) -> bool {
    state
        .battery
        .is_some_and(|b| !b.charging && level(&b) <= policy.battery.critical.get())
}

/// Whether the battery is at or below the low level and not charging.
pub fn battery_low(state: &DeviceState, policy: &Policy) -> bool {
    state
        .battery
        .is_some_and(|b| !b.charging && level(&b) <= policy.battery.low.get())
}

/// Heat, 0..=1: nominal 0, fair and serious as the policy says, critical 1.
pub fn thermal(state: &DeviceState, policy: &Policy) -> f32 {
    match state.thermal {
        ThermalLevel::Nominal => 0.0,
        ThermalLevel::Fair => policy.thermal.fair.get(),
        ThermalLevel::Serious => policy.thermal.serious.get(),
        ThermalLevel::Critical => 1.0,
    }
}

/// Network cost, 0..=1: online 0, metered as the policy says, offline 1; 1 as well while
/// the remote backend cools down.
pub fn network(state: &DeviceState, policy: &Policy, remote_cooling: bool) -> f32 {
    let base = match state.network {
        Network::Online => 0.0,
        Network::Metered => policy.network.metered.get(),
        Network::Offline => 1.0,
    };
    if remote_cooling { 1.0 } else { base }
}

#[cfg(test)]
mod tests {
    use super::*;
    use elmroute_core::Battery;

    fn on_battery(level: f32) -> DeviceState {
        DeviceState {
            battery: Some(Battery {
                level,
                charging: false,
            }),
            ..DeviceState::default()
        }
    }

    #[test]
    fn battery_pressure_rises_as_charge_falls() {
        let p = Policy::default();
        let levels = [0.9, 0.3, 0.2, 0.15, 0.1, 0.05];
        let scores: Vec<f32> = levels
            .iter()
            .map(|&l| battery(&on_battery(l), &p))
            .collect();
        assert!(scores.windows(2).all(|w| w[0] <= w[1]), "{scores:?}");
        assert_eq!(scores[0], 0.0);
        assert_eq!(scores[4], 1.0);
    }

    #[test]
    fn charging_removes_battery_pressure() {
        let mut s = on_battery(0.05);
        s.battery = s.battery.map(|b| Battery {
            charging: true,
            ..b
        });
        assert_eq!(battery(&s, &Policy::default()), 0.0);
        assert!(!battery_critical(&s, &Policy::default()));
    }

    #[test]
    fn percentages_are_read_as_fractions() {
        let p = Policy::default();
        assert_eq!(
            battery(&on_battery(15.0), &p),
            battery(&on_battery(0.15), &p)
        );
        assert!(battery_critical(&on_battery(5.0), &p));
        assert!(!battery_low(&on_battery(80.0), &p));
    }

    #[test]
    fn nan_level_reads_as_full_not_critical() {
        assert_eq!(battery(&on_battery(f32::NAN), &Policy::default()), 0.0);
    }
}
