import PunaCore

/// One flag a subcommand accepts. Names follow llama.cpp where it has one (-m, -p, -n, -c, -t …).
struct FlagSpec {
    let names: [String]
    let value: String?      // placeholder shown in help; nil for a boolean switch
    let help: String
    var repeatable = false
}

/// Parsed command line of one subcommand: flag values by canonical (first) name, plus positionals.
struct ParsedArguments {
    let command: String
    private(set) var values: [String: [String]] = [:]
    private(set) var positionals: [String] = []

    init(command: String, arguments: [String], specs: [FlagSpec]) throws(PunaError) {
        self.command = command
        var byName: [String: FlagSpec] = [:]
        for s in specs { for n in s.names { byName[n] = s } }
        var i = 0
        var onlyPositionals = false
        while i < arguments.count {
            let arg = arguments[i]
            i += 1
            if onlyPositionals || !arg.hasPrefix("-") || arg == "-" {
                positionals.append(arg)
                continue
            }
            if arg == "--" { onlyPositionals = true; continue }
            var name = arg
            var inline: String? = nil
            if arg.hasPrefix("--"), let eq = arg.firstIndex(of: "=") {
                name = String(arg[..<eq])
                inline = String(arg[arg.index(after: eq)...])
            }
            guard let spec = byName[name] else {
                throw PunaError("unknown flag '\(name)' for 'puna \(command)' (see 'puna \(command) --help')")
            }
            let key = spec.names[0]
            if spec.value == nil {
                if inline != nil { throw PunaError("flag \(name) takes no value") }
                values[key, default: []].append("")
            } else {
                let v: String
                if let inline {
                    v = inline
                } else {
                    guard i < arguments.count else { throw PunaError("flag \(name) needs a value (\(spec.value!))") }
                    v = arguments[i]
                    i += 1
                }
                if !spec.repeatable && values[key] != nil {
                    throw PunaError("flag \(name) given more than once")
                }
                values[key, default: []].append(v)
            }
        }
    }

    func has(_ name: String) -> Bool { values[name] != nil }
    func string(_ name: String) -> String? { values[name]?.last }
    func strings(_ name: String) -> [String] { values[name] ?? [] }

    func int(_ name: String, range: ClosedRange<Int>? = nil) throws(PunaError) -> Int? {
        guard let s = string(name) else { return nil }
        guard let v = Int(s) else { throw PunaError("flag \(name): '\(s)' is not an integer") }
        if let range, !range.contains(v) {
            throw PunaError("flag \(name): \(v) is out of range \(range.lowerBound)…\(range.upperBound)")
        }
        return v
    }

    func float(_ name: String, range: ClosedRange<Double>? = nil) throws(PunaError) -> Float? {
        guard let s = string(name) else { return nil }
        guard let v = parseDouble(s), v.isFinite else { throw PunaError("flag \(name): '\(s)' is not a number") }
        if let range, !range.contains(v) {
            throw PunaError("flag \(name): \(s) is out of range \(range.lowerBound)…\(range.upperBound)")
        }
        return Float(v)
    }

    /// A required flag's value.
    func require(_ name: String) throws(PunaError) -> String {
        guard let v = string(name) else { throw PunaError("'puna \(command)' needs \(name) (see 'puna \(command) --help')") }
        return v
    }
}

/// Help text of a subcommand from its flag specs.
func helpText(usage: String, summary: String, specs: [FlagSpec]) -> String {
    var s = "usage: \(usage)\n\n\(summary)\n\noptions:\n"
    for spec in specs {
        var left = "  " + spec.names.joined(separator: ", ")
        if let v = spec.value { left += " \(v)" }
        let pad = left.count < 30 ? String(repeating: " ", count: 30 - left.count) : "  "
        s += left + pad + spec.help + "\n"
    }
    return s
}

let helpFlag = FlagSpec(names: ["-h", "--help"], value: nil, help: "show this help")
