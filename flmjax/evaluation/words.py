"""Small word lists for the generated IQ tasks (written for this project; no external data).

Lowercase content words, proper names and places are disjoint sets, so a parser or a model can
tell roles apart; nothing here is meant to be linguistically rich.
"""

NOUNS = ('apple', 'river', 'stone', 'garden', 'window', 'candle', 'bridge', 'forest', 'letter',
         'mirror', 'basket', 'pencil', 'cloud', 'engine', 'ladder', 'island', 'lantern', 'meadow',
         'harbor', 'violin', 'castle', 'feather', 'rocket', 'blanket', 'tunnel', 'compass',
         'orchard', 'saddle', 'pillow', 'anchor', 'kettle', 'button', 'statue', 'carpet', 'bottle',
         'wagon', 'helmet', 'valley', 'spider', 'tomato', 'cabin', 'puzzle', 'wheel', 'trumpet')
ADJECTIVES = ('quiet', 'bright', 'heavy', 'narrow', 'gentle', 'broken', 'golden', 'tiny', 'ancient',
              'silver', 'hollow', 'rapid', 'soft', 'crooked', 'distant', 'frozen', 'humble', 'wild',
              'plain', 'sturdy', 'calm', 'dusty', 'clever', 'bitter')
VERBS = ('watched', 'carried', 'painted', 'followed', 'repaired', 'admired', 'counted', 'cleaned',
         'measured', 'described', 'borrowed', 'visited', 'ignored', 'polished', 'noticed', 'sorted')
NAMES = ('Mary', 'John', 'Sandra', 'Daniel', 'Alice', 'Brian', 'Fiona', 'Oscar', 'Helen',
         'Victor', 'Nora', 'Peter', 'Grace', 'Tomas', 'Lucia', 'Omar')
PLACES = ('kitchen', 'garage', 'hallway', 'bedroom', 'office', 'bathroom', 'cellar', 'balcony',
          'library', 'attic', 'studio', 'porch')
OBJECTS = ('football', 'umbrella', 'notebook', 'key', 'apple', 'hammer', 'camera', 'scarf',
           'guitar', 'wallet', 'teapot', 'kite')
