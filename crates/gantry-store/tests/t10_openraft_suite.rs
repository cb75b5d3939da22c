//! openraft's storage conformance suite, run against the sled store.

// Tests may unwrap; synchronous helpers poll with std's clock.
#![allow(clippy::unwrap_used, clippy::disallowed_types)]

use gantry_store::{LogStore, StateMachineStore, TypeConfig};
use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;

struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for SledBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError<TypeConfig>> {
        let dir = tempfile::TempDir::new()
            .map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))?;
        let (log, sm) = gantry_store::open(dir.path())
            .map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn t10_sled_store_passes_openraft_suite() {
    TypeConfig::run(async {
        Suite::test_all(SledBuilder).await.expect("storage suite");
    });
}
