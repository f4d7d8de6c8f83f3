# A policy compiled into the ruleset file every node of a farm loads.
{ runCommand, mtac, policyDir, policyFile ? "policy.kdl" }:

runCommand "mtac-ruleset" { nativeBuildInputs = [ mtac ]; } ''
  mkdir -p $out
  # The policy names its lists and certificates relative to its own directory.
  cd ${policyDir}
  mtac build ${policyFile} -o $out/ruleset.mtac
''
