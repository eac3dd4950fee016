import CPuna
import Foundation
import XCTest
import PunaCore

/// Board profiles (boards/*.json): every committed profile parses and is consistent, the copy
/// compiled into the binary is fresh, bad profiles are refused naming file and field, and
/// `--board` supplies -t/-c/-ctk defaults and the memory budget. The cross-built binaries
/// themselves are checked under qemu by scripts/test-boards.
final class BoardTests: XCTestCase {
    static let boardsDirectory = Fixtures.root.deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("boards")

    static func profileFiles() throws -> [URL] {
        try FileManager.default.contentsOfDirectory(at: boardsDirectory, includingPropertiesForKeys: nil)
            .filter { $0.pathExtension == "json" }
            .sorted { $0.lastPathComponent < $1.lastPathComponent }
    }

    func testEveryProfileParsesAndIsConsistent() throws {
        let files = try Self.profileFiles()
        XCTAssertEqual(Set(files.map { $0.deletingPathExtension().lastPathComponent }),
                       ["raspberry-pi-4", "raspberry-pi-5", "orange-pi-5", "jetson-orin-nano", "generic-aarch64", "x86_64-linux"])
        let names = Set(files.map { $0.deletingPathExtension().lastPathComponent })
        for file in files {
            let text = try String(contentsOf: file, encoding: .utf8)
            let p = try BoardProfile.parse(text, source: file.lastPathComponent)
            let where_ = file.lastPathComponent
            XCTAssertEqual(p.name, file.deletingPathExtension().lastPathComponent, where_)
            XCTAssertTrue(KVCache.supportedTypes.contains(p.cacheType), "\(where_): KV type \(p.cacheType.name) is not supported yet")
            XCTAssertFalse(p.compilerFlags.isEmpty, where_)
            if let fallback = p.fallback {
                XCTAssertTrue(names.contains(fallback), "\(where_): fallback \(fallback) is not a profile")
                // The fallback is for CPUs without this build's features, so it must need strictly less.
                let f = try BoardProfile.load(fallback)
                XCTAssertTrue(Set(f.requiredFeatures).isSubset(of: Set(p.requiredFeatures)), where_)
                XCTAssertLessThan(f.requiredFeatures.count, p.requiredFeatures.count, where_)
            }
            if !p.requiredFeatures.isEmpty && p.arch == "aarch64" { XCTAssertNotNil(p.fallback, "\(where_): needs a fallback") }
            // The compiler flags must not let the compiler use more than the binary checks for.
            let flags = p.compilerFlags.joined(separator: " ")
            for feature in ["dotprod", "fp16", "i8mm", "sve"] where flags.contains("+" + feature) {
                XCTAssertTrue(p.requiredFeatures.contains(feature), "\(where_): -march enables \(feature) but requires omits it")
            }
            if p.arch == "aarch64" {
                XCTAssertTrue(p.cpuFeatures.contains("neon"), where_)
                XCTAssertFalse(flags.contains("x86-64"), where_)
            } else {
                XCTAssertTrue(flags.contains("-march=x86-64"), where_)
            }
            XCTAssertGreaterThan(p.memoryReserve, 0, where_)
            for size in p.memorySizes { XCTAssertGreaterThan(size, p.memoryReserve, where_) }
        }
    }

    func testKnownBoardFacts() throws {
        let pi4 = try BoardProfile.load("raspberry-pi-4")
        XCTAssertEqual(pi4.requiredFeatures, [])
        XCTAssertFalse(pi4.cpuFeatures.contains("dotprod"))
        XCTAssertEqual(pi4.compilerFlags, ["-mcpu=cortex-a72"])
        XCTAssertEqual(pi4.memorySizes, [4 << 30, 8 << 30])
        XCTAssertEqual(pi4.threads, 4)

        let pi5 = try BoardProfile.load("raspberry-pi-5")
        XCTAssertEqual(pi5.requiredFeatures, ["dotprod", "fp16"])
        XCTAssertEqual(pi5.fallback, "raspberry-pi-4")
        XCTAssertEqual(pi5.memorySizes, [4 << 30, 8 << 30, 16 << 30])
        XCTAssertEqual(pi5.vulkan.api, "1.2")
        XCTAssertTrue(pi5.vulkan.device.contains("V3D 7.1"))

        XCTAssertTrue(try BoardProfile.load("orange-pi-5").vulkan.device.contains("Mali-G610"))
        XCTAssertEqual(try BoardProfile.load("jetson-orin-nano").threads, 6)
        XCTAssertEqual(try BoardProfile.load("generic-aarch64").requiredFeatures, [])
        XCTAssertEqual(try BoardProfile.load("x86_64-linux").arch, "x86_64")
    }

    /// The profiles compiled into the binary are the files' text (boards/embed-profiles regenerates them).
    func testBuiltinProfilesMatchTheFiles() throws {
        let files = try Self.profileFiles()
        XCTAssertEqual(BoardProfile.builtinNames.sorted(), files.map { $0.deletingPathExtension().lastPathComponent },
                       "run boards/embed-profiles")
        for file in files {
            let name = file.deletingPathExtension().lastPathComponent
            let text = try String(contentsOf: file, encoding: .utf8)
            let builtin = BoardProfile.builtinSources.first { $0.name == name }?.json
            XCTAssertEqual(builtin.map { $0 + "\n" }, text, "\(name): built-in copy is stale; run boards/embed-profiles")
        }
    }

    func testLoadByPathAndUnknownName() throws {
        let file = Self.boardsDirectory.appendingPathComponent("raspberry-pi-5.json").path
        XCTAssertEqual(try BoardProfile.load(file), try BoardProfile.load("raspberry-pi-5"))
        XCTAssertThrowsError(try BoardProfile.load("raspberry-pi-6")) { error in
            let m = (error as! PunaError).message
            XCTAssertTrue(m.contains("unknown board 'raspberry-pi-6'") && m.contains("raspberry-pi-5"), m)
        }
        XCTAssertThrowsError(try BoardProfile.load("/nonexistent/board.json")) { error in
            let m = (error as! PunaError).message
            XCTAssertTrue(m.contains("/nonexistent/board.json: cannot read"), m)
        }
    }

    /// Each broken profile is refused with the field named.
    func testBadProfilesNameTheField() throws {
        let good = try String(contentsOf: Self.boardsDirectory.appendingPathComponent("raspberry-pi-5.json"), encoding: .utf8)
        let cases: [(from: String, to: String, expect: String)] = [
            ("\"threads\": 4", "\"treads\": 4", "unknown field defaults.treads"),
            ("\"threads\": 4", "\"threads\": -1", "field defaults.threads: expected an integer in 0…1024"),
            ("\"threads\": 4", "\"threads\": \"4\"", "field defaults.threads"),
            ("\"context\": 4096", "\"context\": 0", "field defaults.context"),
            ("\"cache_type\": \"f16\"", "\"cache_type\": \"f17\"", "field defaults.cache_type: unknown type 'f17'"),
            ("\"reserve\": \"512M\"", "\"reserve\": \"lots\"", "field memory.reserve: expected a size"),
            ("\"16G\"", "\"16Q\"", "field memory.sizes[2]"),
            ("\"requires\": [\"dotprod\", \"fp16\"]", "\"requires\": [\"dotprod\", \"sme\"]", "unknown CPU feature 'sme'"),
            ("\"requires\": [\"dotprod\", \"fp16\"]", "\"requires\": [\"dotprod\", \"i8mm\"]", "'i8mm' is not among cpu.features"),
            ("\"triple\": \"aarch64-linux-gnu\"", "\"triple\": \"riscv64-linux-gnu\"", "field target.triple"),
            ("\"expected\": \"yes\"", "\"expected\": \"sure\"", "field vulkan.expected"),
            ("\"name\": \"raspberry-pi-5\"", "\"name\": \"Raspberry Pi\"", "field name"),
            ("\"fallback\": \"raspberry-pi-4\"", "\"fallback\": 4", "field target.fallback: expected a string or null"),
            ("\"cflags\": [", "\"cflags\": [1, ", "field target.cflags[0]"),
            ("\"defaults\": {\n    \"threads\": 4,\n    \"context\": 4096,\n    \"cache_type\": \"f16\"\n  }", "\"defaults\": []",
             "field defaults must be an object"),
            ("\"cpu\": {", "\"gpu\": {", "unknown field gpu"),
            ("{", "{,", "board profile bad.json: JSON"),
        ]
        for c in cases {
            XCTAssertTrue(good.contains(c.from), c.from)
            let text = good.replacingOccurrences(of: c.from, with: c.to)
            XCTAssertThrowsError(try BoardProfile.parse(text, source: "bad.json"), c.to) { error in
                let m = (error as! PunaError).message
                XCTAssertTrue(m.hasPrefix("board profile bad.json: "), m)
                XCTAssertTrue(m.contains(c.expect), "expected '\(c.expect)' in: \(m)")
            }
        }
        // A missing section is named too.
        var object = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(good.utf8)) as? [String: Any])
        object["memory"] = nil
        let text = String(decoding: try JSONSerialization.data(withJSONObject: object), as: UTF8.self)
        XCTAssertThrowsError(try BoardProfile.parse(text, source: "bad.json")) { error in
            XCTAssertEqual((error as! PunaError).message, "board profile bad.json: field memory: missing")
        }
    }

    func testByteSizes() {
        XCTAssertEqual(BoardProfile.parseByteSize("512M"), 512 << 20)
        XCTAssertEqual(BoardProfile.parseByteSize("4G"), 4 << 30)
        XCTAssertEqual(BoardProfile.parseByteSize("4GiB"), 4 << 30)
        XCTAssertEqual(BoardProfile.parseByteSize("1.5G"), 3 << 29)
        XCTAssertEqual(BoardProfile.parseByteSize("64k"), 64 << 10)
        XCTAssertEqual(BoardProfile.parseByteSize("1T"), 1 << 40)
        XCTAssertEqual(BoardProfile.parseByteSize("4096"), 4096)
        XCTAssertEqual(BoardProfile.parseByteSize("4096B"), 4096)
        for bad in ["", "G", "-1G", "4 G", "4X", "1e3", "..", "4GG"] {
            XCTAssertNil(BoardProfile.parseByteSize(bad), bad)
        }
    }

    func testMemoryBudget() throws {
        var p = try BoardProfile.load("raspberry-pi-5")
        XCTAssertEqual(p.memoryReserve, 512 << 20)
        XCTAssertEqual(p.memoryBudget(physical: 8 << 30, cgroupLimit: nil), (8 << 30) - (512 << 20))
        XCTAssertEqual(p.memoryBudget(physical: 8 << 30, cgroupLimit: 3 << 30), 3 << 30)
        XCTAssertEqual(p.memoryBudget(physical: 256 << 20, cgroupLimit: nil), 0)
        p.memoryBudgetCap = 2 << 30
        XCTAssertEqual(p.memoryBudget(physical: 8 << 30, cgroupLimit: 3 << 30), 2 << 30)
    }

    func testMissingFeatures() throws {
        let pi5 = try BoardProfile.load("raspberry-pi-5")
        let a72 = PUNA_CPU_NEON.rawValue
        let a76 = PUNA_CPU_NEON.rawValue | PUNA_CPU_DOTPROD.rawValue | PUNA_CPU_FP16.rawValue
        XCTAssertEqual(pi5.missingFeatures(detected: a72, arch: "aarch64"), ["dotprod", "fp16"])
        XCTAssertEqual(pi5.missingFeatures(detected: a76, arch: "aarch64"), [])
        XCTAssertEqual(pi5.missingFeatures(detected: 0, arch: "x86_64"), [], "another architecture is not judged")
        let x86 = try BoardProfile.load("x86_64-linux")
        XCTAssertEqual(x86.missingFeatures(detected: PUNA_CPU_AVX2.rawValue, arch: "x86_64"), ["fma", "f16c"])
    }

    // MARK: the CLI's --board

    private func writeProfile(threads: Int, context: Int, cacheType: String, budget: String) throws -> String {
        var text = try String(contentsOf: Self.boardsDirectory.appendingPathComponent("raspberry-pi-5.json"), encoding: .utf8)
        text = text.replacingOccurrences(of: "\"name\": \"raspberry-pi-5\"", with: "\"name\": \"test-board\"")
            .replacingOccurrences(of: "\"threads\": 4", with: "\"threads\": \(threads)")
            .replacingOccurrences(of: "\"context\": 4096", with: "\"context\": \(context)")
            .replacingOccurrences(of: "\"cache_type\": \"f16\"", with: "\"cache_type\": \"\(cacheType)\"")
            .replacingOccurrences(of: "\"reserve\": \"512M\"", with: "\"reserve\": \"512M\", \"budget\": \"\(budget)\"")
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("puna-board-\(UUID().uuidString).json")
        try text.write(to: url, atomically: true, encoding: .utf8)
        addTeardownBlock { try? FileManager.default.removeItem(at: url) }
        return url.path
    }

    /// A profile whose budget is too small shows, in the refusal's breakdown, the threads, context
    /// and KV type it supplied; explicit flags win over it.
    func testBoardSuppliesDefaultsAndBudget() throws {
        let model = Fixtures.models.appendingPathComponent("tiny-gqa-q8_0.gguf").path
        let board = try writeProfile(threads: 3, context: 40, cacheType: "f32", budget: "64K")
        var (status, out, err) = try Fixtures.runPuna(["run", "-m", model, "-p", "The", "-n", "4", "--board", board])
        XCTAssertEqual(status, 1)
        XCTAssertEqual(out, "")
        for expected in ["the budget of board test-board", "KV cache (f32, 40 positions)", "(3 threads"] {
            XCTAssertTrue(err.contains(expected), "expected '\(expected)' in: \(err)")
        }
        (status, _, err) = try Fixtures.runPuna(["run", "-m", model, "-p", "The", "-n", "4", "--board", board,
                                                 "-t", "2", "-c", "24", "-ctk", "f16"])
        XCTAssertEqual(status, 1)
        for expected in ["KV cache (f16, 24 positions)", "(2 threads"] {
            XCTAssertTrue(err.contains(expected), "expected '\(expected)' in: \(err)")
        }
        // logits sizes its own cache, but the board's budget still applies.
        (status, _, err) = try Fixtures.runPuna(["logits", "-m", model, "--tokens", "1,2,3", "--board", board])
        XCTAssertEqual(status, 1)
        XCTAssertTrue(err.contains("the budget of board test-board"), err)
    }

    /// With a budget that fits, a built-in board runs and gives the same greedy text as no board.
    func testBuiltinBoardRuns() throws {
        let model = Fixtures.models.appendingPathComponent("tiny-gqa-q8_0.gguf").path
        let plain = try Fixtures.runPuna(["run", "-m", model, "-p", "The licensee may", "-n", "8", "--temp", "0"])
        XCTAssertEqual(plain.0, 0, plain.2)
        let native = String(cString: puna_cpu_arch()) == "x86_64" ? "x86_64-linux" : "generic-aarch64"
        for board in [native, "raspberry-pi-4"] {
            let run = try Fixtures.runPuna(["run", "-m", model, "-p", "The licensee may", "-n", "8", "--temp", "0", "--board", board])
            XCTAssertEqual(run.0, 0, run.2)
            XCTAssertEqual(run.1, plain.1, board)
        }
        let bad = try Fixtures.runPuna(["run", "-m", model, "-p", "x", "--board", "pi"])
        XCTAssertEqual(bad.0, 1)
        XCTAssertTrue(bad.2.contains("unknown board 'pi' (choose from"), bad.2)
    }
}
