// swift-tools-version:6.0
import PackageDescription

// A program that embeds Puna the way another project would: it depends on the Puna package and uses
// only its PunaCore library product (CI builds and runs it: scripts/test-example).
let package = Package(
    name: "consumer",
    dependencies: [.package(name: "Puna", path: "../..")],
    targets: [
        .executableTarget(name: "consumer", dependencies: [.product(name: "PunaCore", package: "Puna")]),
    ]
)
