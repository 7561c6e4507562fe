//! Actual state: the records under `claws/`, each refreshed by a probe of the process it
//! names. A pid alone is never trusted: the driver checks the process really is this
//! instance's VM.

use crate::driver::Driver;
use crate::home::Home;
use crate::plan::Observed;
use crate::state::record::{Record, RecordError};

/// Read every record and probe its process. Corrupt records come back as errors; the
/// instances they describe are left alone by the planner (it never sees them).
pub fn observe(home: &Home, driver: &dyn Driver) -> (Vec<Observed>, Vec<RecordError>) {
    let (records, errors) = Record::read_all(home);
    let lives = crate::util::par::par_map(&records, |r| driver.probe(r));
    let observed = records
        .into_iter()
        .zip(lives)
        .map(|(record, live)| Observed { record, live })
        .collect();
    (observed, errors)
}
