import CPuna
import PunaCore

let punaVersion = "0.1.0"

let commandSummaries: [(String, String)] = [
    ("run", "generate text from a prompt"),
    ("chat", "chat on the terminal, keeping the conversation in the KV cache"),
    ("logits", "print the logits of a token sequence (conformance interface)"),
    ("tokenize", "print the token ids of a text"),
    ("perplexity", "perplexity of a text file"),
    ("batch", "work through a JSONL file of prompts (batched, resumable, shardable)"),
    ("serve", "OpenAI-compatible HTTP server with continuous batching and per-request adapters"),
    ("bench", "measure prompt and decode speed (like llama-bench)"),
    ("merge", "write a GGUF with LoRA adapters merged into the weights"),
    ("convert", "convert a Hugging Face model folder to GGUF (f16, bf16, q8_0, q4_k_m …)"),
    ("template", "print the prompt a conversation renders to with the model's chat template"),
    ("info", "show a GGUF file's hyperparameters, tensor types and memory estimate"),
    ("devices", "list Vulkan devices (for --backend vulkan --device N)"),
]

func globalHelp() -> String {
    var s = "puna \(punaVersion): run LLaMA-family GGUF models (and their LoRA adapters) on small devices\n\n"
    s += "usage: puna COMMAND [options]   (puna COMMAND --help for its options)\n\ncommands:\n"
    s += table(commandSummaries.map { ("  " + $0.0, $0.1) })
    return s
}

/// Run one command line; returns the process exit status. Errors print one line naming the cause.
func runCLI(_ arguments: [String]) -> Int32 {
    guard let command = arguments.first else {
        errLine(globalHelp())
        return 2
    }
    let rest = Array(arguments.dropFirst())
    do throws(PunaError) {
        switch command {
        case "info": return try InfoCommand.run(rest)
        case "merge": return try MergeCommand.run(rest)
        case "convert": return try ConvertCommand.run(rest)
        case "devices": return try DevicesCommand.run(rest)
        case "run": return try RunCommand.run(rest)
        case "chat": return try ChatCommand.run(rest)
        case "logits": return try LogitsCommand.run(rest)
        case "tokenize": return try TokenizeCommand.run(rest)
        case "perplexity": return try PerplexityCommand.run(rest)
        case "batch": return try BatchCommand.run(rest)
        case "bench": return try BenchCommand.run(rest)
        case "serve": return try ServeCommand.run(rest)
        case "template": return try TemplateCommand.run(rest)
        case "-h", "--help", "help":
            out(globalHelp())
            return 0
        case "--version", "version":
            outLine("puna \(punaVersion) (\(String(cString: puna_cpu_arch())))")
            return 0
        default:
            throw PunaError("unknown command '\(command)' (see 'puna --help')")
        }
    } catch {
        errLine("puna: error: \(error.message)")
        return 1
    }
}

/// C entry point shared by the SwiftPM build (main.swift) and the Embedded board build (EmbeddedEntry.c).
@_cdecl("puna_cli_main")
public func punaMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> Int32 {
    var args: [String] = []
    for i in 1..<max(Int(argc), 1) { if let p = argv[i] { args.append(String(cString: p)) } }
    if argc > 0, let p = argv[0] { DemoModel.executablePath = String(cString: p) }  // where to look for models/demo
    return runCLI(args)
}
