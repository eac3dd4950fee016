// Embedded Swift has no CommandLine: on the board build this C main hands argc/argv to the CLI's
// @_cdecl entry point. The SwiftPM build uses main.swift instead, which calls the same function.
int puna_cli_main(int argc, char **argv);
int main(int argc, char **argv) { return puna_cli_main(argc, argv); }
