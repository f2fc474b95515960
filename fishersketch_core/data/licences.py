"""One licence note per source package, copied into ``data/LICENSES.md`` by the builder.

Each note summarises the package's ``/usr/share/doc/<package>/copyright`` (Debian) or its
PyPI metadata; the per-domain licence string in the manifest is the short form.
"""
from __future__ import annotations

_MANPAGES_L10N = ("Translations from the manpages-l10n project, GPL-3+ (copyright file of the "
                  "package); each translated page also keeps the licence of its English original.")

LICENCE_NOTES: dict[str, str] = {
    "wordnet-base": "WordNet 3.0 Copyright 2006 by Princeton University. Permission to use, copy, "
                    "modify and distribute this database for any purpose and without fee or royalty "
                    "is granted, provided the copyright notice is kept (the notice heads each data file).",
    "manpages": "Linux man-pages project: per-page licences (GPL-2+, BSD, 'verbatim' and others), "
                "all DFSG-free; see /usr/share/doc/manpages/copyright.",
    "manpages-ja": "JM project translations, distributed under the licences of the original pages "
                   "(all DFSG-free); see the package's copyright file.",
    "manpages-zh": "Chinese man-pages project, GFDL-1.2+ (some files public domain, CC0 or GPL-2).",
    "manpages-tr": "Turkish translations under the GNU GPL unless the English original states otherwise.",
    "fortunes": "fortune-mod collection: BSD-4-clause (UC Berkeley) for the program; the quotations "
                "are short excerpts collected since 4.2BSD, distributed freely.",
    "fortunes-de": "German fortunes collection, GPL-2+.",
    "fortunes-es": "Spanish fortunes collection, GPL-2+.",
    "fortunes-it": "Italian fortunes collection, GPL-2+.",
    "molsets": "MOSES benchmark (Polykovskiy et al. 2020), MIT licence; molecules derived from ZINC Clean Leads.",
    "metastudent-data": "metastudent training data (Rostlab), GPL-2+; sequences from UniProtKB/Swiss-Prot "
                        "(CC BY 4.0) with Gene Ontology annotations (CC BY 4.0).",
    "emboss-test": "EMBOSS test data; EMBOSS licence (GPL-2+ programs, LGPL-2+ libraries). The EMBL "
                   "records are public nucleotide database entries.",
    "pyjaspar": "pyjaspar is MIT-licensed; the bundled JASPAR 2024 matrices are CC BY 4.0 "
                "(Rauluseviciute et al., NAR 2024). Only sampled sites (not the matrices) are shipped.",
    "libpython3.11-stdlib": "Python standard library, PSF licence 2.0.",
    "libc6-dev": "GNU C Library headers, LGPL-2.1+.",
    "libstdc++-12-dev": "GNU C++ library headers, GPL-3+ with the GCC Runtime Library Exception.",
    "perl-modules-5.36": "Perl core modules, GPL-1+ or Artistic licence.",
    "libruby3.1": "Ruby standard library, Ruby licence or BSD-2-clause.",
    "golang-1.19-src": "Go standard library source, BSD-3-clause.",
    "rust-src": "Rust standard library source, MIT or Apache-2.0.",
    "erlang-src": "Erlang/OTP source, Apache-2.0.",
    "emacs-el": "GNU Emacs Lisp sources, GPL-3+.",
    "swi-prolog-core": "SWI-Prolog library, BSD-2-clause.",
    "octave-common": "GNU Octave m-files, GPL-3+.",
    "node-typescript": "TypeScript library declarations, Apache-2.0.",
    "libtcl8.6": "Tcl library scripts, Tcl/Tk licence (BSD-style).",
    "guile-3.0-libs": "GNU Guile Scheme modules, LGPL-3+.",
    "racket-common": "Racket collections, MIT or Apache-2.0.",
    "sbcl-source": "SBCL source, public domain with some BSD-style parts.",
    "nim": "Nim standard library, MIT.",
    "ocaml-source": "OCaml compiler and library source, LGPL-2.1 with the OCaml linking exception.",
    "fpc-source-3.2.2": "Free Pascal RTL and packages, LGPL-2+ with a static-linking exception.",
}
for _p in ("de", "fr", "es", "pl", "ru", "it", "nl", "sv", "cs", "uk", "pt-br", "ro", "da", "fi", "hu", "id"):
    LICENCE_NOTES[f"manpages-{_p}"] = _MANPAGES_L10N
