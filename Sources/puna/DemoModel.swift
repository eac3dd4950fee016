import CPuna
import PunaCore

/// The bundled demo in models/demo (made by scripts/train-demo): `puna run`, `chat`, `batch` and
/// `perplexity` use its base when no -m is given, `puna chat` then adds its adapter and the Guanaco template, and
/// `--lora demo` names its adapter.
enum DemoModel {
    static let baseFile = "fortune-llama-q8_0.gguf"
    static let adapterFile = "fortune-llama-qa-lora.gguf"
    /// The name that `--lora` and `--lora-scaled` take for the demo adapter (a path would be "./demo").
    static let adapterName = "demo"

    /// argv[0] of this process, set by puna_cli_main: the executable's own location is where a
    /// build or an install keeps the demo when the current directory is elsewhere.
    nonisolated(unsafe) static var executablePath: String?

    /// The commands that generate or score text: without -m they use the demo base.
    static let defaultingCommands = ["run", "chat", "batch", "perplexity"]

    /// Whether a command falls back to the demo base when no -m is given.
    static func isDefault(for args: ParsedArguments) -> Bool {
        defaultingCommands.contains(args.command) && !args.has("-m")
    }

    /// The demo file `name`, from the first folder of `searchFolders()` that has it.
    static func path(_ name: String) throws(PunaError) -> String {
        let folders = searchFolders()
        for folder in folders where puna_file_exists(folder + "/" + name) != 0 {
            return folder + "/" + name
        }
        throw PunaError("the demo model file \(name) is not in \(folders.joined(separator: ", ")); "
                        + "give a model with -m FILE, or set PUNA_DEMO_DIR to the folder that holds models/demo's files")
    }

    /// $PUNA_DEMO_DIR if set; else models/demo under the current directory, then next to the
    /// executable and up to three folders above it (a SwiftPM build runs .build/<triple>/release/puna),
    /// then <executable's folder>/../share/puna/demo (an installed copy).
    static func searchFolders() -> [String] {
        if let dir = puna_getenv("PUNA_DEMO_DIR") { return [String(cString: dir)] }
        var folders = ["models/demo"]
        if let exe = executableFolder() {
            var up = exe
            for _ in 0...3 {
                folders.append(up + "/models/demo")
                up += "/.."
            }
            folders.append(exe + "/../share/puna/demo")
        }
        return folders
    }

    /// The folder of argv[0]; a bare name is looked up on $PATH as the shell did.
    static func executableFolder() -> String? {
        guard let exe = executablePath, !exe.isEmpty else { return nil }
        if let slash = exe.lastIndex(of: "/") {
            return slash == exe.startIndex ? "/" : String(exe[..<slash])
        }
        guard let path = puna_getenv("PATH") else { return nil }
        for entry in String(cString: path).split(separator: ":").map(String.init) where puna_file_exists(entry + "/" + exe) != 0 {
            return entry
        }
        return nil
    }

    /// The arguments with the demo filled in: for the defaulting commands without -m, -m is the demo base; every
    /// --lora demo / --lora-scaled demo:S names the demo adapter's file; chat on the demo base with no
    /// adapter asked for gets the demo adapter. Other flags and positionals are kept as they are.
    static func resolve(_ args: ParsedArguments) throws(PunaError) -> ParsedArguments {
        var values = args.values
        let chatDefault = args.command == "chat" && isDefault(for: args)
        if isDefault(for: args) { values["-m"] = [try path(baseFile)] }
        if let loras = values["--lora"] {
            var resolved: [String] = []
            for p in loras { resolved.append(try p == adapterName ? path(adapterFile) : p) }
            values["--lora"] = resolved
        }
        if let scaled = values["--lora-scaled"] {
            let prefix = adapterName + ":"
            var resolved: [String] = []
            for item in scaled {
                resolved.append(try item.hasPrefix(prefix) ? path(adapterFile) + ":" + item.dropFirst(prefix.count) : item)
            }
            values["--lora-scaled"] = resolved
        }
        if chatDefault && values["--lora"] == nil && values["--lora-scaled"] == nil {
            values["--lora"] = [try path(adapterFile)]
        }
        // Parse the values again under specs that take every flag as a repeatable value (switches
        // hold ""), so has/string/strings answer exactly as before for every other flag.
        var specs: [FlagSpec] = []
        var list: [String] = []
        for (name, items) in values {
            specs.append(FlagSpec(names: [name], value: "VALUE", help: "", repeatable: true))
            for item in items { list += [name, item] }
        }
        return try ParsedArguments(command: args.command, arguments: list + ["--"] + args.positionals, specs: specs)
    }
}
