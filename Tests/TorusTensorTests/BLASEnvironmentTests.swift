import Testing
import TorusTensor

/// Which OpenBLAS core a process loads: `TORUS_BLAS_CORE` (unset, `auto`, a name) against the
/// environment's `OPENBLAS_CORETYPE` and the CPU's preferred core.
@Suite struct BLASEnvironmentTests {
    @Test func anEnvironmentPresetIsKeptUnlessAutoIsAsked() {
        let preset = ["OPENBLAS_CORETYPE": "Haswell"]
        #expect(BLASEnvironment.chosenCoreType(environment: preset, preferred: "SkylakeX") == "Haswell")
        #expect(BLASEnvironment.environmentForcedCore(environment: preset, preferred: "SkylakeX") == "Haswell")
        #expect(BLASEnvironment.environmentOverrides(environment: preset, preferred: "SkylakeX")["OPENBLAS_CORETYPE"] == nil)

        let auto = preset.merging(["TORUS_BLAS_CORE": "auto"]) { $1 }
        #expect(BLASEnvironment.chosenCoreType(environment: auto, preferred: "SkylakeX") == "SkylakeX")
        #expect(BLASEnvironment.environmentOverrides(environment: auto, preferred: "SkylakeX")["OPENBLAS_CORETYPE"] == "SkylakeX")
        #expect(BLASEnvironment.environmentForcedCore(environment: auto, preferred: "SkylakeX") == nil)
        // Without AVX-512 `auto` removes the preset so that the library detects the core itself.
        #expect(BLASEnvironment.environmentOverrides(environment: auto, preferred: nil)["OPENBLAS_CORETYPE"] == "")
    }

    @Test func aNamedCoreIsHonouredAndNotWarnedAbout() {
        let named = ["OPENBLAS_CORETYPE": "Haswell", "TORUS_BLAS_CORE": "Haswell"]
        #expect(BLASEnvironment.chosenCoreType(environment: named, preferred: "SkylakeX") == "Haswell")
        #expect(BLASEnvironment.environmentForcedCore(environment: named, preferred: "SkylakeX") == nil)
        let other = ["TORUS_BLAS_CORE": "Cooperlake"]
        #expect(BLASEnvironment.environmentOverrides(environment: other, preferred: "SkylakeX")["OPENBLAS_CORETYPE"] == "Cooperlake")
    }

    @Test func withNothingSetThePreferredCoreIsLoaded() {
        #expect(BLASEnvironment.chosenCoreType(environment: [:], preferred: "SkylakeX") == "SkylakeX")
        #expect(BLASEnvironment.environmentOverrides(environment: [:], preferred: "SkylakeX")["OPENBLAS_CORETYPE"] == "SkylakeX")
        #expect(BLASEnvironment.environmentOverrides(environment: [:], preferred: nil)["OPENBLAS_CORETYPE"] == nil)
        #expect(BLASEnvironment.environmentForcedCore(environment: ["OPENBLAS_CORETYPE": "SkylakeX"], preferred: "SkylakeX") == nil)
    }
}
