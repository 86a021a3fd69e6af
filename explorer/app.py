"""The SimA explorer: `streamlit run explorer/app.py` (or `make run`, or `sima explore`).

The entrypoint draws the shared sidebar (model, device, attack, timesteps) and hands over to
the page the user picked. Pages only arrange results from ``core`` and ``explorer.charts``.
The first screen's welcome is drawn before torch and the model load (seconds on a laptop),
so a newcomer never waits on a blank page.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `streamlit run` puts explorer/ on the path, not the project
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from explorer import welcome  # noqa: E402

# Not "pages/": Streamlit treats a pages/ folder beside the entrypoint as a legacy multipage app
# and then reruns a page without the entrypoint, which would drop the shared sidebar.
PAGES = ROOT / "explorer" / "views"
CHECK = "Check an image"

# The tab icon is drawn here: a Material icon name would make the browser fetch it from Google.
st.set_page_config(page_title="SimA explorer: was this image in the training set?", page_icon=welcome.app_icon(), layout="wide")

navigation = st.navigation({
    "Ask": [
        st.Page(PAGES / "check.py", title=CHECK, icon=":material/image_search:", default=True),
        st.Page(PAGES / "collection.py", title="Check a collection", icon=":material/photo_library:"),
        st.Page(PAGES / "audit.py", title="Audit a dataset", icon=":material/fact_check:"),
    ],
    "Explore": [
        st.Page(PAGES / "timesteps.py", title="Timestep explorer", icon=":material/tune:"),
        st.Page(PAGES / "local_mean.py", title="Local mean", icon=":material/blur_on:"),
        st.Page(PAGES / "compare.py", title="Compare attacks", icon=":material/leaderboard:"),
        st.Page(PAGES / "latent.py", title="Latent bottleneck", icon=":material/layers:"),
    ],
    "Learn": [
        st.Page(PAGES / "about.py", title="About", icon=":material/school:"),
    ],
})
first_screen = st.empty()
if navigation.title == CHECK:
    with first_screen.container():
        st.title(CHECK)
        welcome.show()

from explorer import widgets  # noqa: E402  (imports torch: after the welcome is on screen)

widgets.sidebar()
first_screen.empty()
navigation.run()
