import CPuna
import PunaCore

/// `puna convert HF_FOLDER -o OUT.gguf [--type T]`: a Hugging Face model folder to a GGUF file with
/// the keys and tensors llama.cpp's converter (and llama-quantize, for quantized types) would write.
enum ConvertCommand {
    static let specs: [FlagSpec] = [
        FlagSpec(names: ["-o", "--output"], value: "FILE", help: "the GGUF file to write"),
        FlagSpec(names: ["--type"], value: "TYPE", help: "\(ConvertType.names) (default: bf16 for a bf16 model, else f16; for bitsandbytes folders, the dtype of their unquantized tensors decides)"),
        helpFlag,
    ]

    static func run(_ arguments: [String]) throws(PunaError) -> Int32 {
        let args = try ParsedArguments(command: "convert", arguments: arguments, specs: specs)
        if args.has("-h") {
            out(helpText(usage: "puna convert HF_FOLDER -o OUT.gguf [--type f16|bf16|f32|q8_0|q4_0|q4_k_m|...]",
                         summary: "Convert a Hugging Face model folder (LLaMA, Mistral, SmolLM, Qwen2; safetensors in F32/F16/BF16, or bitsandbytes 4-bit NF4/FP4 and 8-bit) to GGUF. The file matches llama.cpp's convert_hf_to_gguf.py, and for quantized types convert_hf_to_gguf.py --outtype f16 followed by llama-quantize. A bitsandbytes folder is dequantized exactly as bitsandbytes does it, then written in the requested type (so a 4-bit base is re-encoded, no longer the NF4 codes themselves).",
                         specs: specs))
            return 0
        }
        guard args.positionals.count == 1 else {
            throw PunaError(args.positionals.isEmpty ? "'puna convert' needs the Hugging Face model folder (see 'puna convert --help')"
                                                     : "'puna convert' takes one folder, got \(args.positionals.count) arguments")
        }
        let folder = args.positionals[0]
        let output = try args.require("-o")
        var type: ConvertType? = nil
        if let name = args.string("--type") {
            guard let t = ConvertType.named(name) else {
                throw PunaError("flag --type: unknown type '\(name)' (supported: \(ConvertType.names))")
            }
            type = t
        }
        let start = puna_now_ns()
        let converter = try HuggingFaceConverter(folder: folder, type: type)
        let summary = try converter.write(to: output)
        let seconds = Double(puna_now_ns() - start) / 1e9
        let types = summary.typeCounts.map { "\($0.count) \($0.type.name)" }.joined(separator: ", ")
        if !converter.modelCardSkipped.isEmpty {
            errLine("puna convert: note: README.md model card keys not written (a YAML form puna does not read, or not text): \(converter.modelCardSkipped.joined(separator: ", "))")
        }
        if let scheme = converter.bitsAndBytes {
            errLine("puna convert: \(converter.dequantizedCount) \(scheme) matrices dequantized as bitsandbytes does, then encoded as \(summary.type.name)")
        }
        errLine("puna convert: \(summary.architecture) model, \(summary.parameterCount) parameters, \(summary.tensorCount) tensors (\(types)) as \(summary.type.name); wrote \(output) (\(formatBytes(summary.fileBytes))) in \(fixed(seconds, 2)) s")
        return 0
    }
}
