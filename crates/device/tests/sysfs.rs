//! Tests of the sysfs reader on fake trees.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use std::fs;
use std::path::Path;
use std::time::Duration;

use elmroute_device::{DeviceSource, Network, SysfsDevice, ThermalLevel, ThermalThresholds};

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, text).unwrap();
}

fn laptop(root: &Path, capacity: u32, status: &str, ac_online: u8) {
    write(root, "sys/class/power_supply/BAT0/type", "Battery\n");
    write(
        root,
        "sys/class/power_supply/BAT0/capacity",
        &format!("{capacity}\n"),
    );
    write(
        root,
        "sys/class/power_supply/BAT0/status",
        &format!("{status}\n"),
    );
    write(root, "sys/class/power_supply/AC/type", "Mains\n");
    write(
        root,
        "sys/class/power_supply/AC/online",
        &format!("{ac_online}\n"),
    );
    write(root, "sys/class/net/lo/operstate", "unknown\n");
    nic(root, "wlan0", "up");
}

/// A hardware network interface (it has a `device` link).
fn nic(root: &Path, name: &str, state: &str) {
    write(
        root,
        &format!("sys/class/net/{name}/operstate"),
        &format!("{state}\n"),
    );
    fs::create_dir_all(root.join(format!("sys/class/net/{name}/device"))).unwrap();
}

fn reader(root: &Path) -> SysfsDevice {
    SysfsDevice::new(root).with_max_age(Duration::ZERO)
}

#[test]
fn discharging_battery_is_read_as_a_fraction() {
    let dir = tempfile::tempdir().unwrap();
    laptop(dir.path(), 15, "Discharging", 0);
    let s = reader(dir.path()).state();
    let b = s.battery.unwrap();
    assert!((b.level - 0.15).abs() < 1e-6);
    assert!(!b.charging);
    assert_eq!(s.network, Network::Online);
    assert_eq!(s.thermal, ThermalLevel::Nominal);
    assert!(!s.low_power);
}

#[test]
fn mains_online_counts_as_charging_even_when_battery_says_not_charging() {
    let dir = tempfile::tempdir().unwrap();
    laptop(dir.path(), 80, "Not charging", 1);
    assert!(reader(dir.path()).state().battery.unwrap().charging);
}

#[test]
fn desktop_without_battery_reads_none() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "sys/class/power_supply/AC/type", "Mains\n");
    write(dir.path(), "sys/class/power_supply/AC/online", "1\n");
    assert_eq!(reader(dir.path()).state().battery, None);
}

#[test]
fn hottest_zone_decides_using_trip_points() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    write(r, "sys/class/thermal/thermal_zone0/temp", "45000\n");
    write(r, "sys/class/thermal/thermal_zone1/temp", "99000\n");
    write(
        r,
        "sys/class/thermal/thermal_zone1/trip_point_0_type",
        "passive\n",
    );
    write(
        r,
        "sys/class/thermal/thermal_zone1/trip_point_0_temp",
        "80000\n",
    );
    write(
        r,
        "sys/class/thermal/thermal_zone1/trip_point_1_type",
        "critical\n",
    );
    write(
        r,
        "sys/class/thermal/thermal_zone1/trip_point_1_temp",
        "105000\n",
    );
    // 99 °C is past passive and hot (defaults to serious 85) but below critical - 5 = 100.
    assert_eq!(reader(r).state().thermal, ThermalLevel::Serious);
    write(r, "sys/class/thermal/thermal_zone1/temp", "101000\n");
    assert_eq!(reader(r).state().thermal, ThermalLevel::Critical);
}

#[test]
fn zones_without_trip_points_use_thresholds() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    write(r, "sys/class/thermal/thermal_zone0/temp", "72000\n");
    let dev = reader(r).with_thresholds(ThermalThresholds {
        fair: 60.0,
        serious: 70.0,
        critical: 90.0,
    });
    assert_eq!(dev.state().thermal, ThermalLevel::Serious);
    assert_eq!(reader(r).state().thermal, ThermalLevel::Fair);
}

#[test]
fn garbage_files_are_ignored_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    write(r, "sys/class/power_supply/BAT0/type", "Battery\n");
    write(r, "sys/class/power_supply/BAT0/capacity", "lots\n");
    write(r, "sys/class/thermal/thermal_zone0/temp", "\u{0}\u{1}\n");
    let s = reader(r).state();
    assert_eq!(s.battery, None);
    assert_eq!(s.thermal, ThermalLevel::Nominal);
}

#[test]
fn network_offline_when_only_loopback_is_up_and_metered_on_wwan() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    write(r, "sys/class/net/lo/operstate", "unknown\n");
    nic(r, "eth0", "down");
    assert_eq!(reader(r).state().network, Network::Offline);
    nic(r, "wwan0", "up");
    assert_eq!(reader(r).state().network, Network::Metered);
    nic(r, "eth0", "up");
    assert_eq!(reader(r).state().network, Network::Online);
}

#[test]
fn virtual_interfaces_do_not_count_as_online() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    nic(r, "wlp2s0", "down");
    for virt in ["docker0", "veth12ab", "virbr0", "wg0", "tun0"] {
        write(r, &format!("sys/class/net/{virt}/operstate"), "up\n");
    }
    assert_eq!(reader(r).state().network, Network::Offline);
}

#[test]
fn peripheral_batteries_are_ignored_and_system_batteries_combined() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    // A mouse at 5 % must not make a desktop look critical.
    write(
        r,
        "sys/class/power_supply/hidpp_battery_0/type",
        "Battery\n",
    );
    write(
        r,
        "sys/class/power_supply/hidpp_battery_0/scope",
        "Device\n",
    );
    write(r, "sys/class/power_supply/hidpp_battery_0/capacity", "5\n");
    write(
        r,
        "sys/class/power_supply/hidpp_battery_0/status",
        "Discharging\n",
    );
    assert_eq!(reader(r).state().battery, None);
    // Two laptop batteries: 20 Wh of 20 and 4 Wh of 40 -> 24 of 60 = 40 %.
    for (name, now, full) in [
        ("BAT0", 20_000_000, 20_000_000),
        ("BAT1", 4_000_000, 40_000_000),
    ] {
        write(
            r,
            &format!("sys/class/power_supply/{name}/type"),
            "Battery\n",
        );
        write(
            r,
            &format!("sys/class/power_supply/{name}/capacity"),
            &format!("{}\n", now * 100 / full),
        );
        write(
            r,
            &format!("sys/class/power_supply/{name}/status"),
            "Discharging\n",
        );
        write(
            r,
            &format!("sys/class/power_supply/{name}/energy_now"),
            &format!("{now}\n"),
        );
        write(
            r,
            &format!("sys/class/power_supply/{name}/energy_full"),
            &format!("{full}\n"),
        );
    }
    let b = reader(r).state().battery.unwrap();
    assert!((b.level - 0.4).abs() < 1e-6, "{}", b.level);
    assert!(!b.charging);
}

#[test]
fn low_power_profile_is_read() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "sys/firmware/acpi/platform_profile",
        "low-power\n",
    );
    assert!(reader(dir.path()).state().low_power);
}

#[test]
fn readings_are_cached_for_max_age() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    laptop(r, 50, "Discharging", 0);
    let dev = SysfsDevice::new(r).with_max_age(Duration::from_secs(3600));
    assert!((dev.state().battery.unwrap().level - 0.5).abs() < 1e-6);
    write(r, "sys/class/power_supply/BAT0/capacity", "10\n");
    assert!((dev.state().battery.unwrap().level - 0.5).abs() < 1e-6);
    assert!((dev.read().battery.unwrap().level - 0.1).abs() < 1e-6);
}
