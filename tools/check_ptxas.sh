#!/usr/bin/env bash
# Compiler launcher of the sm_90a kernels (CMakeLists.txt): runs the compile, passes its output
# through, and fails it when ptxas reports a spill, serialized wgmma, an injected warpgroup wait
# or an ignored setmaxnreg: each silently costs the overlap the kernels are built around.
log=$(mktemp)
"$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
if [ "$status" -eq 0 ] && grep -Eq '[1-9][0-9]* bytes spill (stores|loads)|wgmma.mma_async instructions are serialized|warpgroup.wait is injected|C7508|C7510' "$log"; then
  echo "check_ptxas.sh: ptxas reported spills or serialized wgmma (see above); failing the build" >&2
  status=1
fi
rm -f "$log"
exit "$status"
