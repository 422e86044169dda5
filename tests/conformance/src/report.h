#pragma once
// The suite's machine-readable report: at the end of a run, one JSON file per backend that ran
// cases, <dir>/<backend name>.json with dir = $EVENTBUS_CONFORMANCE_REPORT_DIR (default: the
// working directory):
//
//   {"backend": "redis", "capabilities": {"persistent": true, ...},
//    "hooks": {"crash": true, "restart_server": true, ...},
//    "passed": 30, "failed": 0, "skipped": 2,
//    "cases": [{"name": "NackZeroRedeliversWithCountIncreased", "result": "passed",
//               "milliseconds": 12}, {"name": ..., "result": "skipped",
//               "reason": "backend does not declare Capabilities::ordered_per_key"}, ...]}
//
// scripts/conformance_table.py turns the files into the README's backends x cases table.
// Private to the suite's sources.

#include <string>

#include "eventbus/conformance/conformance.h"

namespace eventbus::conformance {

// Adds the report writer to GoogleTest's listeners. Idempotent; safe during static
// initialisation (the instantiation macro calls it through LinkConformanceSuite).
void InstallReport();

// What the report says a backend declares: the hooks it gives and its Capabilities.
void NoteBackend(const BackendUnderTest& backend);
void NoteCapabilities(const std::string& backend, const Capabilities& caps);

}  // namespace eventbus::conformance
