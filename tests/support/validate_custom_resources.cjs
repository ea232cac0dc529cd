// Validates Kubernetes custom resources (Gateway API, KEDA) against the schemas of their CRDs, as published in the
// @kubernetes-models packages. Reads a JSON array of objects on stdin; prints a JSON array of problems, one per object
// that fails or whose kind has no schema here; exits 0 either way (the Python test decides).
const MODULES = {
  "gateway.networking.k8s.io/v1": "@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1",
  "gateway.networking.k8s.io/v1beta1": "@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1beta1",
  "keda.sh/v1alpha1": "@kubernetes-models/keda/keda.sh/v1alpha1",
};

let input = "";
process.stdin.on("data", (chunk) => (input += chunk));
process.stdin.on("end", () => {
  const problems = [];
  for (const obj of JSON.parse(input)) {
    const where = `${obj.kind}/${obj.metadata && obj.metadata.name}`;
    const module = MODULES[obj.apiVersion];
    const Kind = module && require(module)[obj.kind];
    if (!Kind) {
      problems.push({ object: where, error: `no schema for ${obj.apiVersion} ${obj.kind}` });
      continue;
    }
    try {
      new Kind(obj).validate();
    } catch (error) {
      problems.push({ object: where, error: String(error.message || error) });
    }
  }
  process.stdout.write(JSON.stringify(problems));
});
