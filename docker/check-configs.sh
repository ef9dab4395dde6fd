#!/usr/bin/env bash
# Validates the deployment files without Docker (the development machines
# have none): parses every YAML file, then runs `byokpg check --kms` on
# docker/config/byokpg.toml with the compose service names pointed at local
# stand-ins — PostgreSQL on 127.0.0.1:5432 (trust, user postgres; databases
# deploycheck_{us,eu,apac} made with initdb/10-demo-schema.sh), moto_server
# and OpenBao dev from .venv, initialised the way compose's one-shot services
# do it — and `byokpg check` on the k8s ConfigMap's config (its hosts do not
# exist here: only "cannot connect" problems are acceptable).
#
# Usage: bash docker/check-configs.sh path/to/byokpg   (from the repository root)
set -euo pipefail
BYOKPG=${1:?usage: check-configs.sh path/to/byokpg}
VENV=.venv/bin
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

"$VENV/python" - <<'PY'
import glob, yaml
c = yaml.safe_load(open("docker/compose.yml"))
svcs = c["services"]
for name, s in svcs.items():
    for dep, cond in (s.get("depends_on") or {}).items():
        assert dep in svcs, f"{name} depends on unknown {dep}"
        if cond["condition"] == "service_healthy":
            assert "healthcheck" in svcs[dep], f"{name} waits for {dep}, which has no healthcheck"
for f in sorted(glob.glob("docker/k8s/*.yaml")):
    docs = [d for d in yaml.safe_load_all(open(f)) if d]
    assert docs, f
    print("yaml ok:", f, [d["kind"] for d in docs])
PY
"$VENV/python" -c 'import yaml; print(yaml.safe_load(open("docker/k8s/configmap.yaml"))["data"]["byokpg.toml"], end="")' > "$WORK/k8s.toml"

tenants=(acme globex initech)
i=0
for r in us eu apac; do
    db=deploycheck_$r
    psql -h 127.0.0.1 -U postgres -qAtc "select 1 from pg_database where datname = '$db'" | grep -q 1 \
        || createdb -h 127.0.0.1 -U postgres "$db"
    POSTGRES_USER=postgres POSTGRES_DB=$db DEMO_TENANT=${tenants[$i]} PGHOST=127.0.0.1 \
        PGOPTIONS='-c client_min_messages=warning' bash docker/initdb/10-demo-schema.sh >/dev/null
    i=$((i + 1))
done

port() { "$VENV/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
MOTO_PORT=$(port); BAO_PORT=$(port)
"$VENV/moto_server" -H 127.0.0.1 -p "$MOTO_PORT" >"$WORK/moto.log" 2>&1 & PIDS+=($!)
"$VENV/bao" server -dev -dev-root-token-id=check-root -dev-listen-address="127.0.0.1:$BAO_PORT" >"$WORK/bao.log" 2>&1 & PIDS+=($!)
export BAO_ADDR=http://127.0.0.1:$BAO_PORT BAO_TOKEN=check-root
export AWS_ACCESS_KEY_ID=check AWS_SECRET_ACCESS_KEY=check-secret AWS_DEFAULT_REGION=eu-west-1 AWS_EC2_METADATA_DISABLED=true
for _ in $(seq 50); do "$VENV/bao" status >/dev/null 2>&1 && break; sleep 0.2; done
# What compose's openbao-init and moto-init do.
"$VENV/bao" secrets list | grep -q '^transit/' || "$VENV/bao" secrets enable transit >/dev/null
for key in acme-kek initech-kek; do "$VENV/bao" write -f "transit/keys/$key" type=aes256-gcm96 >/dev/null; done
"$VENV/python" - "$MOTO_PORT" <<'PY'
import sys, time, boto3
kms = boto3.client("kms", endpoint_url=f"http://127.0.0.1:{sys.argv[1]}", region_name="eu-west-1")
for _ in range(50):
    try:
        kms.list_aliases(); break
    except Exception:
        time.sleep(0.2)
key = kms.create_key(Description="byokpg check: globex KEK")["KeyMetadata"]["KeyId"]
kms.create_alias(AliasName="alias/globex-kek", TargetKeyId=key)
PY

sed -e 's/host=pg-\([a-z]*\) port=5432 user=byokpg/host=127.0.0.1 port=5432 user=postgres/' \
    -e 's/dbname=app/dbname=deploycheck_REGION/' \
    -e "s#http://openbao:8200#http://127.0.0.1:$BAO_PORT#" \
    -e "s#http://moto:5000#http://127.0.0.1:$MOTO_PORT#" \
    docker/config/byokpg.toml > "$WORK/compose.toml"
for r in us eu apac; do
    sed -i "/^\[regions.$r\]/{n;s/deploycheck_REGION/deploycheck_$r/}" "$WORK/compose.toml"
done
PG_PORT_=$(port); ADMIN_PORT=$(port)
sed -i -e "s/^listen = \"0.0.0.0:6432\"/listen = \"127.0.0.1:$PG_PORT_\"/" \
       -e "s/^admin_listen = \"0.0.0.0:9930\"/admin_listen = \"127.0.0.1:$ADMIN_PORT\"/" "$WORK/compose.toml"
export BYOKPG_ADMIN_TOKEN=check-admin BYOKPG_DEMO_PASSWORD=demo PG_PASSWORD=unused VAULT_TOKEN=check-root
echo "--- byokpg setup + check --kms on docker/config/byokpg.toml (services replaced by local stand-ins)"
"$BYOKPG" --config "$WORK/compose.toml" setup
"$BYOKPG" --config "$WORK/compose.toml" check --kms

echo "--- byokpg serve with it: acme (Vault Transit) and globex (AWS KMS) write and read customers"
"$BYOKPG" --config "$WORK/compose.toml" serve >"$WORK/serve.log" 2>&1 & PIDS+=($!)
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null 2>&1 && break; sleep 0.2; done
curl -fsS "http://127.0.0.1:$ADMIN_PORT/readyz"; echo
MARK=check$RANDOM$RANDOM
for tenant_region in acme:us globex:eu; do
    tenant=${tenant_region%%:*}; region=${tenant_region##*:}
    url="postgres://demo:demo@127.0.0.1:$PG_PORT_/app?sslmode=disable&options=-c%20byokpg.tenant%3D$tenant"
    got=$(psql -X -q -At -v ON_ERROR_STOP=1 -d "$url" \
        -c "insert into customers (email, ssn) values ('$MARK-$tenant@example.com', '$MARK-ssn')" \
        -c "select ssn from customers where email = '$MARK-$tenant@example.com'")
    [[ "$got" == "$MARK-ssn" ]] || { echo "$tenant: read back '$got'" >&2; cat "$WORK/serve.log" >&2; exit 1; }
    stored=$(psql -X -At -h 127.0.0.1 -U postgres -d "deploycheck_$region" \
        -c "select email || ' ' || ssn from customers where tenant_id = '$tenant' order by id desc limit 1")
    [[ "$stored" == byok1:* && "$stored" != *"$MARK"* ]] || { echo "$tenant: stored '$stored'" >&2; exit 1; }
    echo "$tenant ($region): round trip ok, stored ${stored:0:40}..."
done

echo "--- byokpg check on the k8s ConfigMap's byokpg.toml (its hosts do not exist here)"
export BYOKPG_APP_PASSWORD=x PG_US_PASSWORD=x PG_EU_PASSWORD=x PG_APAC_PASSWORD=x
set +e
"$BYOKPG" --config "$WORK/k8s.toml" check > "$WORK/k8s.out" 2>&1
set -e
cat "$WORK/k8s.out"
if grep -v -i -e 'connect' -e '^$' "$WORK/k8s.out" | grep -q ':[0-9]*: '; then
    echo "k8s config: problems other than unreachable regions" >&2
    exit 1
fi
echo "check-configs: ok"
