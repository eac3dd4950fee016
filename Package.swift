// swift-tools-version:6.0
import PackageDescription

// Puna: an embedded LLM runtime. CPuna holds the C core (mmap, CPU features, thread pool, kernels),
// PunaCore the Foundation-free Swift model code, `puna` the CLI. PunaCore and the CLI also compile
// as Embedded Swift (scripts/check-embedded), so nothing here may pull in Foundation.
let package = Package(
    name: "Puna",
    products: [
        .library(name: "PunaCore", targets: ["PunaCore"]),
        .executable(name: "puna", targets: ["puna"]),
    ],
    targets: [
        .target(
            name: "CPuna",
            cSettings: [.unsafeFlags(["-O3", "-fno-math-errno"]), .define("_GNU_SOURCE")]
        ),
        .target(
            name: "PunaCore",
            dependencies: ["CPuna"]
        ),
        .executableTarget(
            name: "puna",
            dependencies: ["PunaCore", "CPuna"],
            exclude: ["EmbeddedEntry.c"]
        ),
        .testTarget(
            name: "PunaCoreTests",
            dependencies: ["PunaCore", "CPuna"]
        ),
    ],
    swiftLanguageModes: [.v5]
)
