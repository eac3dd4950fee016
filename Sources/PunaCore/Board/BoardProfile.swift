import CPuna

/// A board profile (`boards/NAME.json`): what `boards/build NAME` compiles for, and the defaults
/// `puna … --board NAME` applies where -t, -c and -ctk are not given, plus the memory budget the
/// run is checked against. The profiles in `boards/` are also compiled into the binary
/// (`BoardProfilesBuiltin.swift`), so a board needs only the one file to use them.
public struct BoardProfile: Equatable {
    public var name: String
    public var description: String
    /// GNU target triple of the build: "aarch64-linux-gnu" or "x86_64-linux-gnu".
    public var triple: String
    /// Compiler CPU flags of the C kernels ("-march=armv8.2-a+dotprod+fp16", …).
    public var compilerFlags: [String]
    /// Optional CPU features those flags let the compiler use; the binary refuses to start without them.
    public var requiredFeatures: [String]
    /// The profile to build instead on a CPU that lacks `requiredFeatures`; nil when there is none.
    public var fallback: String?
    /// The board's cores, in words.
    public var cores: String
    /// Features the board's CPU has, so the kernels may use them (runtime dispatch).
    public var cpuFeatures: [String]
    /// Default -t; 0 means one thread per online CPU.
    public var threads: Int
    /// Default -c (capped at the model's own context length).
    public var context: Int
    /// Default -ctk / -ctv.
    public var cacheType: GGMLType
    /// RAM sizes the board is sold with, in bytes (informational).
    public var memorySizes: [Int]
    /// Memory left to the operating system: the budget is physical memory less this.
    public var memoryReserve: Int
    /// An absolute cap on the budget, when the profile sets one.
    public var memoryBudgetCap: Int?
    public var vulkan: Vulkan

    /// What to expect of the board's GPU through Vulkan.
    public struct Vulkan: Equatable {
        /// "yes", "optional", "depends", "unknown" or "no".
        public var expected: String
        public var device: String
        public var driver: String
        /// Vulkan API version the driver is expected to offer ("1.2").
        public var api: String
        public var notes: String
    }

    /// Feature names a profile may use, with their `puna_cpu_features()` bits.
    public static let featureBits: [(name: String, bit: UInt32)] = [
        ("neon", PUNA_CPU_NEON.rawValue), ("dotprod", PUNA_CPU_DOTPROD.rawValue), ("fp16", PUNA_CPU_FP16.rawValue),
        ("i8mm", PUNA_CPU_I8MM.rawValue), ("sve", PUNA_CPU_SVE.rawValue),
        ("avx2", PUNA_CPU_AVX2.rawValue), ("fma", PUNA_CPU_FMA.rawValue), ("f16c", PUNA_CPU_F16C.rawValue),
        ("avx512f", PUNA_CPU_AVX512F.rawValue), ("avx512bw", PUNA_CPU_AVX512BW.rawValue),
        ("avx512vnni", PUNA_CPU_AVX512VNNI.rawValue),
    ]

    public static let vulkanExpectations = ["yes", "optional", "depends", "unknown", "no"]
    public static let triples = ["aarch64-linux-gnu", "x86_64-linux-gnu"]

    /// The architecture part of the triple ("aarch64"), as `puna_cpu_arch()` names it.
    public var arch: String { String(triple.prefix { $0 != "-" }) }

    /// `cpuFeatures` this machine lacks (empty on a matching board, or when the architecture differs
    /// and the question does not apply).
    public func missingFeatures(detected: UInt32, arch machineArch: String) -> [String] {
        guard machineArch == arch else { return [] }
        return cpuFeatures.filter { name in
            guard let bit = BoardProfile.featureBits.first(where: { $0.name == name })?.bit else { return false }
            return detected & bit == 0
        }
    }

    /// Bytes a run may use: physical memory less the reserve, within the cgroup limit (when one is
    /// set; the container's limit already excludes the host's own needs) and the profile's cap.
    public func memoryBudget(physical: Int, cgroupLimit: Int?) -> Int {
        var budget = max(physical - memoryReserve, 0)
        if let cgroupLimit, cgroupLimit > 0 { budget = min(budget, cgroupLimit) }
        if let memoryBudgetCap { budget = min(budget, memoryBudgetCap) }
        return budget
    }

    // MARK: finding a profile

    /// Names of the profiles compiled into the binary.
    public static var builtinNames: [String] { builtinSources.map { $0.name } }

    /// A profile by built-in name, or from a JSON file when the argument is a path (has a '/' or
    /// ends in ".json").
    static let maxProfileBytes = 1 << 20

    public static func load(_ nameOrPath: String) throws(PunaError) -> BoardProfile {
        if nameOrPath.contains("/") || nameOrPath.hasSuffix(".json") {
            let text = try withInputBytes(nameOrPath, maxBytes: maxProfileBytes, limitNote: "a board profile is a few KB of JSON") {
                (bytes: UnsafeBufferPointer<UInt8>) throws(PunaError) -> String in String(decoding: bytes, as: UTF8.self)
            }
            return try parse(text, source: nameOrPath)
        }
        guard let builtin = builtinSources.first(where: { $0.name == nameOrPath }) else {
            throw PunaError("unknown board '\(nameOrPath)' (choose from \(builtinNames.joined(separator: ", ")), or give a profile's path)")
        }
        let profile = try parse(builtin.json, source: "built-in board \(builtin.name)")
        return profile
    }

    // MARK: parsing

    /// Parse a profile's JSON text; `source` names it in errors. Unknown fields are errors too, so
    /// a misspelt default cannot be silently ignored.
    public static func parse(_ text: String, source: String) throws(PunaError) -> BoardProfile {
        let document: JSONValue
        do throws(PunaError) {
            document = try JSONValue.parse(text)
        } catch {
            throw PunaError("board profile \(source): \(error.message)")
        }
        let root = try Fields(document, path: "", source: source,
                              allowed: ["name", "description", "target", "cpu", "defaults", "memory", "vulkan"])
        let target = try root.object("target", allowed: ["triple", "cflags", "requires", "fallback"])
        let cpu = try root.object("cpu", allowed: ["cores", "features"])
        let defaults = try root.object("defaults", allowed: ["threads", "context", "cache_type"])
        let memory = try root.object("memory", allowed: ["sizes", "reserve", "budget"])
        let vulkan = try root.object("vulkan", allowed: ["expected", "device", "driver", "api", "notes"])

        let name = try root.string("name")
        guard !name.isEmpty, name.utf8.allSatisfy({ isNameByte($0) }) else {
            throw root.error("name", "'\(name)' must be lower-case letters, digits, '-', '_' or '.'")
        }
        let triple = try target.string("triple")
        guard triples.contains(triple) else {
            throw target.error("triple", "'\(triple)' is not one of \(triples.joined(separator: ", "))")
        }
        let requires = try target.features("requires")
        let cpuFeatures = try cpu.features("features")
        for f in requires where !cpuFeatures.contains(f) {
            throw target.error("requires", "'\(f)' is not among cpu.features, so the board itself could not run the build")
        }
        let cacheName = try defaults.string("cache_type")
        guard let cacheType = GGMLType(name: cacheName) else {
            throw defaults.error("cache_type", "unknown type '\(cacheName)'")
        }
        var sizes: [Int] = []
        for (i, item) in try memory.array("sizes").enumerated() {
            guard let text = item.string, let bytes = parseByteSize(text), bytes > 0 else {
                throw memory.error("sizes[\(i)]", "expected a size such as \"4G\"")
            }
            sizes.append(bytes)
        }
        let expected = try vulkan.string("expected")
        guard vulkanExpectations.contains(expected) else {
            throw vulkan.error("expected", "'\(expected)' is not one of \(vulkanExpectations.joined(separator: ", "))")
        }
        return BoardProfile(
            name: name,
            description: try root.string("description"),
            triple: triple,
            compilerFlags: try target.strings("cflags"),
            requiredFeatures: requires,
            fallback: try target.optionalString("fallback"),
            cores: try cpu.string("cores"),
            cpuFeatures: cpuFeatures,
            threads: try defaults.int("threads", range: 0...1024),
            context: try defaults.int("context", range: 1...(1 << 24)),
            cacheType: cacheType,
            memorySizes: sizes,
            memoryReserve: try memory.size("reserve"),
            memoryBudgetCap: memory.has("budget") ? try memory.size("budget") : nil,
            vulkan: Vulkan(expected: expected, device: try vulkan.string("device"), driver: try vulkan.string("driver"),
                           api: try vulkan.string("api"), notes: try vulkan.string("notes")))
    }

    /// "512M", "4G", "1.5GiB", "4096" → bytes (binary multiples: K = 1024). Nil for anything else.
    public static func parseByteSize(_ text: String) -> Int? {
        var bytes = Array(text.utf8)
        if bytes.last == UInt8(ascii: "B") { bytes.removeLast() }
        if bytes.last == UInt8(ascii: "i") { bytes.removeLast() }
        var multiplier = 1.0
        if let last = bytes.last {
            switch last {
            case UInt8(ascii: "K"), UInt8(ascii: "k"): multiplier = 1024
            case UInt8(ascii: "M"): multiplier = 1048576
            case UInt8(ascii: "G"): multiplier = 1073741824
            case UInt8(ascii: "T"): multiplier = 1099511627776
            default: break
            }
            if multiplier != 1 { bytes.removeLast() }
        }
        guard !bytes.isEmpty, bytes.allSatisfy({ ($0 >= 48 && $0 <= 57) || $0 == 46 }),
              let value = parseDecimal(String(decoding: bytes, as: UTF8.self)) else { return nil }
        let total = (value * multiplier).rounded()
        guard total < 9.0e18 else { return nil }
        return Int(total)
    }

    private static func parseDecimal(_ text: String) -> Double? {
        var result: Double = 0
        let ok = text.withCString { puna_parse_double($0, &result) }
        return ok == 1 ? result : nil
    }

    private static func isNameByte(_ c: UInt8) -> Bool {
        (c >= 97 && c <= 122) || (c >= 48 && c <= 57) || c == 45 || c == 95 || c == 46
    }
}

/// One JSON object of a profile being read, with its dotted path for error messages.
private struct Fields {
    let members: [(key: String, value: JSONValue)]
    let path: String
    let source: String

    init(_ value: JSONValue, path: String, source: String, allowed: [String]) throws(PunaError) {
        self.path = path
        self.source = source
        guard let members = value.object else {
            throw PunaError("board profile \(source): \(path.isEmpty ? "the document" : "field " + path) must be an object")
        }
        self.members = members
        for m in members where !allowed.contains(m.key) {
            throw PunaError("board profile \(source): unknown field \(qualified(m.key)) (known: \(allowed.joined(separator: ", ")))")
        }
    }

    func qualified(_ key: String) -> String { path.isEmpty ? key : path + "." + key }

    func error(_ key: String, _ message: String) -> PunaError {
        PunaError("board profile \(source): field \(qualified(key)): \(message)")
    }

    func has(_ key: String) -> Bool { members.contains { $0.key == key } }

    func value(_ key: String) throws(PunaError) -> JSONValue {
        guard let v = members.first(where: { $0.key == key })?.value else { throw error(key, "missing") }
        return v
    }

    func object(_ key: String, allowed: [String]) throws(PunaError) -> Fields {
        try Fields(try value(key), path: qualified(key), source: source, allowed: allowed)
    }

    func string(_ key: String) throws(PunaError) -> String {
        guard let s = try value(key).string else { throw error(key, "expected a string") }
        return s
    }

    func optionalString(_ key: String) throws(PunaError) -> String? {
        let v = try value(key)
        if v.isNull { return nil }
        guard let s = v.string else { throw error(key, "expected a string or null") }
        return s
    }

    func int(_ key: String, range: ClosedRange<Int>) throws(PunaError) -> Int {
        guard let n = try value(key).int, range.contains(n) else {
            throw error(key, "expected an integer in \(range.lowerBound)…\(range.upperBound)")
        }
        return n
    }

    func array(_ key: String) throws(PunaError) -> [JSONValue] {
        guard let a = try value(key).array else { throw error(key, "expected an array") }
        return a
    }

    func strings(_ key: String) throws(PunaError) -> [String] {
        var result: [String] = []
        for (i, item) in try array(key).enumerated() {
            guard let s = item.string else { throw error("\(key)[\(i)]", "expected a string") }
            result.append(s)
        }
        return result
    }

    func features(_ key: String) throws(PunaError) -> [String] {
        let names = try strings(key)
        for n in names where !BoardProfile.featureBits.contains(where: { $0.name == n }) {
            throw error(key, "unknown CPU feature '\(n)' (known: \(BoardProfile.featureBits.map { $0.name }.joined(separator: ", ")))")
        }
        return names
    }

    func size(_ key: String) throws(PunaError) -> Int {
        guard let text = try value(key).string, let bytes = BoardProfile.parseByteSize(text) else {
            throw error(key, "expected a size such as \"512M\" or \"4G\"")
        }
        return bytes
    }
}
