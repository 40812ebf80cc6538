// swift-tools-version:6.1
import PackageDescription

let package = Package(
    name: "Torus",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "torus", targets: ["torus"]),
        .executable(name: "torus-netdelay", targets: ["torus-netdelay"]),
        .library(name: "TorusModel", targets: ["TorusModel"]),
        .library(name: "TorusComm", targets: ["TorusComm"]),
        .library(name: "TorusTrain", targets: ["TorusTrain"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "5.0.1"),
        // HTTP serving (TorusHTTP only): the OpenAI-compatible API and Prometheus metrics.
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1", traits: []),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.0.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.5.0"),
    ],
    targets: [
        // Open MPI's C API plus static inline getters for the predefined handles that Swift
        // cannot import (MPI_COMM_WORLD, MPI_FLOAT, MPI_SUM, ... are macros over globals).
        .systemLibrary(name: "CMPI", path: "Sources/CMPI", pkgConfig: "ompi-c",
                       providers: [.apt(["libopenmpi-dev", "openmpi-bin"])]),
        // OpenBLAS's CBLAS interface.
        .systemLibrary(name: "CBLAS", path: "Sources/CBLAS", pkgConfig: "openblas",
                       providers: [.apt(["libopenblas-dev"])]),
        .target(name: "TorusTrace"),
        .target(name: "TorusComm", dependencies: ["CMPI", "TorusTensor", "TorusTrace"]),
        // Vectorised elementwise kernels (exp, sigmoid, max), optimised even in debug builds.
        .target(name: "CTorusKernels", cSettings: [.unsafeFlags(["-O3", "-fno-math-errno"])]),
        .target(name: "TorusTensor", dependencies: ["CBLAS", "CTorusKernels"]),
        .target(name: "TorusModel", dependencies: ["TorusTensor"]),
        .target(name: "TorusParallel", dependencies: ["TorusComm", "TorusModel", "TorusTensor", "TorusTrace"]),
        .target(name: "TorusTrain", dependencies: ["TorusComm", "TorusModel", "TorusParallel", "TorusTensor", "TorusTrace"]),
        // The serving engine: batched model steps over a paged KV cache with prefix caching,
        // the scheduler, sampling, tokenizers. No HTTP and no MPI.
        .target(name: "TorusServe", dependencies: ["TorusModel", "TorusTensor", "TorusTrace"]),
        // The OpenAI-compatible HTTP API and /metrics over the engine.
        .target(name: "TorusHTTP", dependencies: [
            "TorusServe", "TorusModel",
            .product(name: "Hummingbird", package: "hummingbird"),
            .product(name: "Prometheus", package: "swift-prometheus"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        .executableTarget(name: "torus", dependencies: [
            "TorusServe", "TorusHTTP", "TorusComm", "TorusTensor", "TorusModel", "TorusTrain", "TorusParallel", "TorusTrace",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Yams", package: "Yams"),
        ]),
        // Link latency for the simulated cluster (launch/cluster) where the kernel lacks netem.
        .executableTarget(name: "torus-netdelay", path: "Sources/TorusNetDelay"),
        .testTarget(name: "TorusTensorTests", dependencies: ["TorusTensor"]),
        .testTarget(name: "TorusModelTests", dependencies: ["TorusModel", "TorusTensor"]),
        .testTarget(name: "TorusTraceTests", dependencies: ["TorusTrace"]),
        .testTarget(name: "TorusParallelTests", dependencies: ["TorusParallel", "TorusTensor"]),
        .testTarget(name: "TorusTrainTests", dependencies: ["TorusTrain", "TorusModel"]),
        .testTarget(name: "TorusServeTests", dependencies: ["TorusServe", "TorusModel", "TorusTensor"]),
        .testTarget(name: "TorusIntegrationTests", dependencies: ["TorusModel", "TorusTensor"]),
    ],
    swiftLanguageModes: [.v5]
)
