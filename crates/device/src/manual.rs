use std::sync::{Arc, RwLock};

use elmroute_core::{DeviceSource, DeviceState};

/// A device source the host app writes into. Clones share one state, so the app keeps a
/// clone and updates it from its OS callbacks while the router reads another.
#[derive(Debug, Clone, Default)]
pub struct ManualDevice {
    state: Arc<RwLock<DeviceState>>,
}

impl ManualDevice {
    /// A source holding `state`.
    pub fn new(state: DeviceState) -> Self {
        Self {
            state: Arc::new(RwLock::new(state)),
        }
    }

    /// Replaces the state.
    pub fn set(&self, state: DeviceState) {
        self.update(|s| *s = state);
    }

    /// Changes part of the state.
    pub fn update(&self, f: impl FnOnce(&mut DeviceState)) {
        // A writer that panicked cannot leave a DeviceState half-valid (it is plain data), so
        // a poisoned lock is still safe to use.
        let mut guard = self.state.write().unwrap_or_else(|e| e.into_inner());
        f(&mut guard);
    }
}

impl DeviceSource for ManualDevice {
    fn state(&self) -> DeviceState {
        *self.state.read().unwrap_or_else(|e| e.into_inner())
    }
}
