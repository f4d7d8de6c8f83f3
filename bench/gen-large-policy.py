#!/usr/bin/env python3
"""Writes a large, realistic, deterministic policy for the issue-2 size and speed goals.

    bench/gen-large-policy.py OUTDIR [--scale N]

OUTDIR gets:

- ``policy.kdl``: one inbound-MX farm that names the three lists below and delivers to a maildir;
- ``cidrs.txt``: 1,000,000 distinct networks, 85% IPv4 (/16 to /32, weighted towards /24 and
  /32 as in real block lists) and 15% IPv6 (/32 to /64, mostly /48 and /64 under a few thousand
  provider allocations);
- ``addresses.txt``: 1,000,000 distinct addresses ``firstname.lastname[N]@domain`` over
- ``domains.txt``: 100,000 distinct customer domains under a handful of TLDs.

``--scale N`` divides every count by N (``--scale 100`` for a CI smoke run). The seed is fixed:
two runs with the same scale write byte-identical files. Nested networks are allowed (the
compiler warns about them, as it would for a real list); exact duplicates are not, because the
compiler treats a network listed twice with different replies as an error.
"""

import argparse
import ipaddress
import os
import random
import sys

SEED = 0x6D746163  # "mtac"

FIRST = """
james mary robert patricia john jennifer michael linda david elizabeth william barbara richard
susan joseph jessica thomas sarah charles karen christopher lisa daniel nancy matthew betty
anthony margaret mark sandra donald ashley steven kimberly paul emily andrew donna joshua
michelle kenneth carol kevin amanda brian dorothy george melissa timothy deborah ronald
stephanie edward rebecca jason sharon jeffrey laura ryan cynthia jacob kathleen gary amy
nicholas angela eric shirley jonathan anna stephen brenda larry pamela justin emma scott
nicole brandon helen benjamin samantha samuel katherine gregory christine alexander debra
frank rachel patrick carolyn raymond janet jack catherine dennis maria jerry heather tyler
diane aaron ruth jose julie adam olivia nathan joyce henry virginia douglas victoria zachary
kelly peter lauren kyle christina ethan joan walter evelyn noah judith jeremy megan christian
andrea keith cheryl roger hannah terry jacqueline gerald martha harold gloria sean teresa
austin ann carl sara arthur madison lawrence frances dylan kathryn jesse janice jordan jean
bryan abigail billy alice joe julia bruce judy gabriel sophia logan grace albert denise
willie amber alan doris juan marilyn wayne danielle elijah beverly randy isabella roy theresa
vincent diana ralph natalie eugene brittany russell charlotte bobby marie mason kayla philip
alexis louis lori marta pablo quique lucia javier elena sergio carmen hans anke jurgen petra
luca giulia marco chiara pierre camille louis manon jan eva piotr anna oleg olga kenji yuki
""".split()

LAST = """
smith johnson williams brown jones garcia miller davis rodriguez martinez hernandez lopez
gonzalez wilson anderson thomas taylor moore jackson martin lee perez thompson white harris
sanchez clark ramirez lewis robinson walker young allen king wright scott torres nguyen hill
flores green adams nelson baker hall rivera campbell mitchell carter roberts gomez phillips
evans turner diaz parker cruz edwards collins reyes stewart morris morales murphy cook rogers
gutierrez ortiz morgan cooper peterson bailey reed kelly howard ramos kim cox ward richardson
watson brooks chavez wood james bennett gray mendoza ruiz hughes price alvarez castillo
sanders patel myers long ross foster jimenez powell jenkins perry russell sullivan bell
coleman butler henderson barnes gonzales fisher vasquez simmons romero jordan patterson
alexander hamilton graham reynolds griffin wallace moreno west cole hayes bryant herrera
gibson ellis tran medina aguilar stevens murray ford castro marshall owens harrison fernandez
mcdonald woods washington kennedy wells vargas henry chen freeman webb tucker guzman burns
crawford olson simpson porter hunter gordon mendez silva shaw snyder mason dixon munoz hunt
hicks holmes palmer wagner black robertson boyd rose stone salazar fox warren mills meyer
rice schmidt garza daniels ferguson nichols stephens soto weaver ryan gardner payne grant
dunn kelley spencer hawkins arnold pierce vazquez hansen peters santos hart bradley knight
elliott cunningham duncan armstrong hudson carroll lane riley andrews alvarado ray delgado
berry perkins hoffman johnston matthews pena richards contreras willis carpenter lawrence
sandoval guerrero george chapman rios estrada ortega watkins greene nunez wheeler valdez
harper burke larson santiago maldonado morrison franklin carlson austin dominguez navarro
muller schneider fischer weber becker schulz rossi russo ferrari esposito bianchi dubois
durand lefebvre moreau laurent nowak kowalski wisniewski ivanov petrov tanaka suzuki sato
""".split()

# Weighted like the TLD mix of a European hosting customer base.
TLDS = [("com", 40), ("net", 10), ("org", 8), ("de", 12), ("fr", 8), ("es", 6), ("it", 5),
        ("co.uk", 6), ("nl", 3), ("example", 2)]

# IPv4 prefix lengths: mostly single hosts and /24s, a tail of larger blocks.
V4_LENGTHS = [(16, 1)] + [(n, 1) for n in range(17, 24)] + [(24, 25)] + \
    [(n, 10 / 7) for n in range(25, 32)] + [(32, 55)]
# IPv6 prefix lengths: mostly /48 sites and /64 subnets.
V6_LENGTHS = [(32, 0.5)] + [(n, 10 / 15) for n in range(33, 48)] + [(48, 40)] + \
    [(n, 9.5 / 15) for n in range(49, 64)] + [(64, 40)]


def weighted(rng, table):
    values = [v for v, _ in table]
    weights = [w for _, w in table]
    return lambda: rng.choices(values, weights)[0]


def gen_domains(rng, count):
    tld = weighted(rng, TLDS)
    words = FIRST + LAST
    seen = set()
    out = []
    while len(out) < count:
        style = rng.random()
        if style < 0.5:
            name = f"customer{len(out):05d}"
        elif style < 0.8:
            name = f"{rng.choice(words)}-{rng.choice(words)}"
        else:
            name = f"{rng.choice(LAST)}{rng.choice(['', 'group', 'tech', 'law', 'media', 'shop'])}"
        domain = f"{name}.{tld()}"
        if domain not in seen:
            seen.add(domain)
            out.append(domain)
    return out


def gen_addresses(rng, domains, count):
    seen = set()
    out = []
    while len(out) < count:
        # Domain sizes are skewed: a few large customers, many small ones.
        if rng.random() < 0.3:
            domain = domains[min(int((rng.paretovariate(1.2) - 1) * 100), len(domains) - 1)]
        else:
            domain = rng.choice(domains)
        first, last = rng.choice(FIRST), rng.choice(LAST)
        form = rng.random()
        if form < 0.6:
            local = f"{first}.{last}"
        elif form < 0.85:
            local = f"{first}.{last}{rng.randint(1, 99)}"
        elif form < 0.95:
            local = f"{first[0]}{last}"
        else:
            local = f"{first}"
        address = f"{local}@{domain}"
        if address not in seen:
            seen.add(address)
            out.append(address)
    return out


def gen_cidrs(rng, count):
    v4_count = count * 85 // 100
    v6_count = count - v4_count
    v4_len = weighted(rng, V4_LENGTHS)
    v6_len = weighted(rng, V6_LENGTHS)
    seen = set()
    v4 = []
    while len(v4) < v4_count:
        length = v4_len()
        # Skip 0/8, 10/8, 127/8 and multicast and above: block lists hold public space.
        first = rng.choice([o for o in range(1, 224) if o not in (10, 127)])
        addr = (first << 24) | rng.getrandbits(24)
        net = addr & ((0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF)
        if (net, length) not in seen:
            seen.add((net, length))
            v4.append(f"{ipaddress.IPv4Address(net)}/{length}")
    # IPv6: networks under a few thousand provider /32s in 2000::/4, as real lists cluster.
    providers = [(0x2 << 124) | (rng.getrandbits(28) << 96) for _ in range(max(1, v6_count // 50))]
    v6 = []
    while len(v6) < v6_count:
        length = v6_len()
        addr = rng.choice(providers) | (rng.getrandbits(32) << 64)
        net = addr & (((1 << 128) - 1) ^ ((1 << (128 - length)) - 1))
        if (net, length) not in seen:
            seen.add((net, length))
            v6.append(f"{ipaddress.IPv6Address(net)}/{length}")
    out = v4 + v6
    rng.shuffle(out)
    return out


POLICY = """// Generated by bench/gen-large-policy.py (seed {seed:#x}, scale 1/{scale}): the issue-2 policy.
hostname "mx1.bench.example"
spool "/tmp/mtac-bench/spool"

farm "mx" kind="inbound-mx" {{
    listen "0.0.0.0:25"
    local-domains file="domains.txt"
    local-addresses file="addresses.txt"
    access {{
        reject file="cidrs.txt"
    }}
    deliver maildir="/tmp/mtac-bench/Maildir"
}}
"""


def write_lines(path, header, lines):
    with open(path, "w", encoding="ascii", newline="\n") as f:
        f.write(f"# {header}\n")
        f.write("\n".join(lines))
        f.write("\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir")
    parser.add_argument("--scale", type=int, default=1, help="divide every count by this")
    args = parser.parse_args()
    if args.scale < 1:
        sys.exit("--scale must be at least 1")
    os.makedirs(args.outdir, exist_ok=True)

    rng = random.Random(SEED)
    n_cidrs, n_addresses, n_domains = (max(1, n // args.scale) for n in (1_000_000, 1_000_000, 100_000))
    domains = gen_domains(rng, n_domains)
    addresses = gen_addresses(rng, domains, n_addresses)
    cidrs = gen_cidrs(rng, n_cidrs)

    write_lines(os.path.join(args.outdir, "domains.txt"), f"{len(domains)} local domains", domains)
    write_lines(os.path.join(args.outdir, "addresses.txt"), f"{len(addresses)} mailbox addresses", addresses)
    write_lines(os.path.join(args.outdir, "cidrs.txt"), f"{len(cidrs)} blocked networks", cidrs)
    with open(os.path.join(args.outdir, "policy.kdl"), "w", encoding="ascii", newline="\n") as f:
        f.write(POLICY.format(seed=SEED, scale=args.scale))
    print(f"{args.outdir}: {len(cidrs)} networks, {len(addresses)} addresses, {len(domains)} domains")


if __name__ == "__main__":
    main()
