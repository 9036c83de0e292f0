# Init container of the volume overlay (same image, the claim mounted at /volume): an empty claim
# mounted over /models/bert_ner would hide the image's own version and no pod would ever be ready,
# so the image's versions are copied onto a claim that holds none. Each is copied aside and
# renamed into place, so a replica seeding at the same time or a server polling sees no half copy.
set -eu
shopt -s nullglob
existing=(/volume/[0-9]*/saved_model.pb)
if [ ${#existing[@]} -gt 0 ]; then
  echo "seed: the claim holds versions already; left as it is"
  exit 0
fi
for version in /models/bert_ner/[0-9]*/; do
  name=$(basename "$version")
  aside="/volume/.seed-$name-$HOSTNAME"
  cp -r "$version" "$aside"
  if mv -T "$aside" "/volume/$name" 2>/dev/null; then
    echo "seed: version $name of the image copied onto the claim"
  else
    rm -rf "$aside"
  fi
done
